"""bench/accuracy --train-images: a shared set cut down to a few good images, its test set whole."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_bench_script
from trainer.testset import load_test_set


@pytest.fixture
def small_set(bottle_dir, tmp_path) -> Path:
    root = tmp_path / "shared" / "bottle"
    for folder, names in {"train/good": ["000.png", "001.png", "002.png", "003.png", "004.png"],
                          "test/good": ["000.png"], "test/broken_large": ["000.png"],
                          "ground_truth/broken_large": ["000_mask.png"]}.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(bottle_dir / folder / name, root / folder / name)
    return root


def good_names(subset: Path) -> set[str]:
    return {p.name for p in (subset / "train" / "good").iterdir()}


def test_it_links_a_seeded_draw_of_the_good_images_and_the_whole_test_set(small_set, tmp_path):
    bench = load_bench_script("accuracy")
    subset = bench.with_fewer_good_images(small_set, 3, seed=0, folder=tmp_path / "out" / "data")

    assert subset == tmp_path / "out" / "data" / "bottle"  # the set keeps its name: runs and tables are named by it
    drawn = good_names(subset)
    assert len(drawn) == 3 and drawn <= good_names(small_set)
    assert all((subset / "train" / "good" / name).resolve() == (small_set / "train" / "good" / name).resolve()
               for name in drawn)
    assert [(i.defect_type, i.image_path.name, i.has_pixel_labels) for i in load_test_set(subset)] == \
        [(i.defect_type, i.image_path.name, i.has_pixel_labels) for i in load_test_set(small_set)]

    again = bench.with_fewer_good_images(small_set, 3, seed=0, folder=tmp_path / "out" / "data")
    assert good_names(again) == drawn  # the same seed draws the same images (--resume trains on what it trained on)
    others = {frozenset(good_names(bench.with_fewer_good_images(small_set, 3, seed, tmp_path / f"s{seed}" / "data")))
              for seed in range(1, 6)}
    assert len(others | {frozenset(drawn)}) > 1  # the seed picks the images


def test_a_smaller_count_replaces_the_earlier_draw(small_set, tmp_path):
    bench = load_bench_script("accuracy")
    bench.with_fewer_good_images(small_set, 4, seed=0, folder=tmp_path / "data")
    assert len(good_names(bench.with_fewer_good_images(small_set, 2, seed=0, folder=tmp_path / "data"))) == 2


@pytest.mark.parametrize("count", [0, 5, 9])
def test_a_count_that_leaves_nothing_out_or_nothing_in_is_refused(small_set, tmp_path, count):
    with pytest.raises(SystemExit, match=r"between 1 and 4 .*\(5 good training images\), not "):
        load_bench_script("accuracy").with_fewer_good_images(small_set, count, seed=0, folder=tmp_path / "data")


def test_a_set_of_the_same_name_elsewhere_gets_its_own_test_set(small_set, tmp_path):
    bench = load_bench_script("accuracy")
    other = tmp_path / "elsewhere" / "bottle"
    shutil.copytree(small_set, other)
    (other / "test" / "broken_large").rename(other / "test" / "contamination")
    shutil.rmtree(other / "ground_truth")  # and no masks
    bench.with_fewer_good_images(small_set, 3, seed=0, folder=tmp_path / "data")
    subset = bench.with_fewer_good_images(other, 3, seed=0, folder=tmp_path / "data")
    tested = load_test_set(subset)
    assert [i.image_path.resolve() for i in tested] == [i.image_path.resolve() for i in load_test_set(other)]
    assert {i.defect_type for i in tested} == {"good", "contamination"} and not any(i.has_pixel_labels for i in tested if i.is_defective)
    assert not (subset / "ground_truth").exists()


def test_a_folder_without_train_good_is_refused_by_name(tmp_path):
    (tmp_path / "part" / "test" / "good").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"part/train/good, which is not a folder"):
        load_bench_script("accuracy").with_fewer_good_images(tmp_path / "part", 3, seed=0, folder=tmp_path / "data")


def test_the_table_names_a_training_that_left_the_recipe_and_record_refuses_it():
    script = load_bench_script("accuracy")
    recipe = script.RECIPES["cpu"].to_dict()
    assert script.training_note({"recipe": "cpu", "config": recipe}) == ""
    assert script.training_note({"recipe": "cpu", "config": recipe | {"bf16": True}}) == " bf16"
    assert script.training_note({"recipe": "cpu", "config": recipe | {"base_width": 24, "bf16": True}}) == " 24 wide bf16"
    assert script.training_note({"recipe": "cpu", "config": recipe | {"bf16": None}}) == ""  # an earlier summary's default
    assert script.training_note({"recipe": "cpu", "config": recipe | {"loss_gms": "map"}}) == " loss map"
    assert script.training_note({"recipe": "cpu", "config": recipe | {"crop_size": 128}}) == " 128 px crops"
    assert script.training_note({"recipe": "cpu", "config": recipe | {"minutes": 6.5}}) == " 6.5 min budget"
    assert script.training_note({"recipe": "cpu", "config": recipe | {"minutes": 0.0}}) == ""  # a summary from before the budget
    assert script.training_note({"recipe": "gpu", "config": script.RECIPES["gpu"].to_dict()}) == ""
    assert script.training_note({"recipe": "gpu", "config": script.RECIPES["gpu"].to_dict() | {"crop_size": 96}}) == " 96 px crops"
    del recipe["loss_gms"]  # a summary from before the option
    assert script.training_note({"recipe": "cpu", "config": recipe}) == ""


@pytest.mark.parametrize("option", [["--bf16"], ["--loss-gms", "map"], ["--crop-size", "128"], ["--minutes", "6.5"]])
def test_record_refuses_a_training_off_the_recipe(option):
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "bench" / "accuracy"), *option, "--record"],
                         capture_output=True, text=True, cwd=root, timeout=60)  # fmt: skip
    assert run.returncode == 2 and "run is printed only" in run.stderr and option[0] in run.stderr
