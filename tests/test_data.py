"""Finding, splitting and loading training images, and the errors a user sees."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.method.preprocess import prepare, read_image
from trainer.data import DataError, GoodImages, find_training_set


def small_good_folder(bottle_dir: Path, folder: Path, count: int, suffixes=(".png",)) -> Path:
    """`count` real bottle images, shrunk to 96 px so the tests stay fast."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((bottle_dir / "train" / "good").glob("*.png"))[:count]
    for i, source in enumerate(sources):
        image = cv2.resize(read_image(source), (96, 96), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"part{i:02d}{suffixes[i % len(suffixes)]}"), image)
    return folder


def test_plain_folder_with_mixed_suffixes(bottle_dir, tmp_path):
    # The same suffixes as the edge's folder source, so what the line inspects can be trained on.
    folder = small_good_folder(bottle_dir, tmp_path / "widgets", 10, (".png", ".JPG", ".jpeg", ".Bmp", ".webp"))
    (folder / "notes.txt").write_text("not an image")
    data = find_training_set(folder)
    assert data.category == "widgets"
    assert len(data.held_out) == 4 and len(data.train) == 6
    assert not set(data.train) & set(data.held_out)
    assert {p.suffix for p in data.train + data.held_out} == {".png", ".JPG", ".jpeg", ".Bmp", ".webp"}


def test_a_held_out_count_replaces_the_ten_percent(bottle_dir, tmp_path):
    folder = small_good_folder(bottle_dir, tmp_path / "parts", 40)
    assert len(find_training_set(folder).held_out) == 4  # 10 % of 40
    data = find_training_set(folder, held_out=25)  # beyond the automatic cap of 20 too
    assert len(data.held_out) == 25 and len(data.train) == 15 and not set(data.train) & set(data.held_out)
    with pytest.raises(DataError, match=r"has 40 images; at least 41 are needed \(39 held out"):
        find_training_set(folder, held_out=39)


def test_mvtec_layout_gives_category_name(bottle_dir):
    data = find_training_set(bottle_dir)
    assert data.category == "bottle"
    assert len(data.train) + len(data.held_out) == 209
    assert len(data.held_out) == 20  # 10 % of 209, capped at 20
    assert find_training_set(bottle_dir / "train" / "good").category == "bottle"


def test_btad_layout_trains_on_train_ok(bottle_dir, tmp_path):
    folder = tmp_path / "01" / "train" / "ok"
    folder.mkdir(parents=True)
    for path in sorted((bottle_dir / "train" / "good").glob("*.png"))[:8]:
        shutil.copy(path, folder)
    for given in (tmp_path / "01", folder):
        data = find_training_set(given)
        assert data.category == "01" and data.root == folder
        assert len(data.train) + len(data.held_out) == 8


def test_split_is_reproducible_from_the_seed(bottle_dir, tmp_path):
    folder = small_good_folder(bottle_dir, tmp_path / "parts", 12)
    first, again = find_training_set(folder, seed=3), find_training_set(folder, seed=3)
    assert first.held_out == again.held_out and first.fingerprint() == again.fingerprint()
    other = find_training_set(folder, seed=4)
    assert other.held_out != first.held_out
    assert other.fingerprint() != first.fingerprint()


def test_fingerprint_sees_a_changed_file(bottle_dir, tmp_path):
    folder = small_good_folder(bottle_dir, tmp_path / "parts", 6)
    before = find_training_set(folder).fingerprint()
    shutil.copy(folder / "part01.png", folder / "part00.png")
    assert find_training_set(folder).fingerprint() != before


def test_dataset_uses_the_edge_preprocessing(bottle_dir, tmp_path):
    folder = small_good_folder(bottle_dir, tmp_path / "parts", 6)
    data = find_training_set(folder)
    images = GoodImages(data.train, (32, 32))
    assert len(images) == 2 and images[0].shape == (3, 32, 32)
    np.testing.assert_array_equal(images[1].numpy(), prepare(read_image(data.train[1]), (32, 32)))


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        find_training_set(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images in .*empty"):
        find_training_set(tmp_path / "empty")


def test_too_few_images_to_hold_out(bottle_dir, tmp_path):
    folder = small_good_folder(bottle_dir, tmp_path / "few", 5)
    with pytest.raises(DataError, match=r"few has 5 images; at least 6"):
        find_training_set(folder)
    with pytest.raises(DataError, match=r"one has 1 image; at least 6"):
        find_training_set(small_good_folder(bottle_dir, tmp_path / "one", 1))


def test_corrupt_image_is_named(bottle_dir, tmp_path):
    folder = small_good_folder(bottle_dir, tmp_path / "parts", 6)
    data = find_training_set(folder)
    broken = data.train[0]
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated PNG
    with pytest.raises(DataError, match=broken.name):
        GoodImages(data.train, (32, 32))


def test_the_input_keeps_the_parts_aspect_ratio_at_about_the_named_pixel_count(bottle_dir):
    from trainer.data import input_shape

    kolektor = sorted((bottle_dir.parents[1] / "kolektorsdd" / "train" / "good").glob("*.jpg"))[:5]
    tall = input_shape(kolektor, 192, 16)  # 500 x 1260 strips
    square = input_shape(sorted((bottle_dir / "train" / "good").glob("*.png"))[:5], 192, 16)
    assert square == (192, 192)
    assert tall == (304, 128) and abs(tall[0] * tall[1] / 192**2 - 1) < 0.1


def test_the_input_never_enlarges_images_smaller_than_the_named_pixel_count(bottle_dir, tmp_path):
    from trainer.data import input_shape

    def shrunk(name: str, width: int, height: int) -> list:
        folder = tmp_path / name
        folder.mkdir()
        for source in sorted((bottle_dir / "train" / "good").glob("*.png"))[:3]:
            cv2.imwrite(str(folder / source.name), cv2.resize(cv2.imread(str(source)), (width, height)))
        return sorted(folder.iterdir())

    assert input_shape(shrunk("80", 80, 80), 160, 16) == (80, 80)  # their own size, not 160 x 160
    assert input_shape(shrunk("40", 40, 40), 160, 16) == (32, 32)  # rounded down to the U-Net's multiple
    assert input_shape(shrunk("tall", 50, 130), 160, 16) == (128, 48)  # the aspect kept within 130 x 50
    assert input_shape(shrunk("8", 8, 8), 160, 16) == (16, 16)  # the smallest the net takes
    assert input_shape(shrunk("240", 240, 240), 160, 16) == (160, 160)  # larger images: the named count


def test_a_folder_of_good_and_bad_parts_points_training_at_its_good_folder(tmp_path):
    """The layout evaluate reads (parts/good, parts/bad) given to train: the error names good/."""
    for folder in ("OK", "bad"):
        (tmp_path / "parts" / folder).mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images in .*parts .*it holds OK/: train on .*parts/OK, keeping the good parts"):
        find_training_set(tmp_path / "parts")
