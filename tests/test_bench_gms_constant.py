"""bench/gms_constant: one model's test set scored with the paper's GMS constant and with c from the part's own gradients."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dataclasses import replace

from edge.manifest import Manifest, manifest_path
from edge.method.anomaly_map import GMS_C
from tests.conftest import OLD_BOTTLE_MODEL

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gms_constant"


def small_bottle(bottle_dir: Path, root: Path) -> Path:
    for folder, names in {"train/good": ["000.png", "001.png"], "test/good": ["000.png", "001.png"],
                          "test/broken_large": ["000.png"], "ground_truth/broken_large": ["000_mask.png"]}.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(bottle_dir / folder / name, root / folder / name)
    return root


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def test_it_scores_each_constant_over_the_draws(bottle_dir, tmp_path):
    data = small_bottle(bottle_dir, tmp_path / "bottle")
    result = run(str(OLD_BOTTLE_MODEL), str(data), "--draws", "2", "--multiples", "1,2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "2 training images, median gradient" in lines[0] and "mask seeds 0 to 1" in lines[0]
    assert "image score: the anomaly map's maximum" in lines[0]  # a model exported before the top 1 % score
    per_draw = [line for line in lines if line.startswith("seed ")]
    assert len(per_draw) == 2 * 3  # two draws, three constants
    assert sum(f"the paper's, {GMS_C}" in line for line in per_draw) == 2
    assert sum("(2 x typical gradient)^2 (export's)" in line for line in per_draw) == 2
    assert lines[-4] == "over 2 mask draws: mean (range)"
    assert all("image AUROC" in line and "pixel AUROC" in line for line in lines[-3:])


def test_it_scores_images_as_the_edge_scores_them_with_that_model(bottle_dir, tmp_path):
    data = small_bottle(bottle_dir, tmp_path / "bottle")
    model = tmp_path / OLD_BOTTLE_MODEL.name
    shutil.copy(OLD_BOTTLE_MODEL, model)
    replace(Manifest.for_model(OLD_BOTTLE_MODEL), score_top_fraction=0.01).save(manifest_path(model))
    result = run(str(model), str(data), "--draws", "1", "--multiples", "2")
    assert result.returncode == 0, result.stderr
    assert "image score: the mean of the anomaly map's highest 1 % of pixels" in result.stdout.splitlines()[0]


def test_bad_arguments_are_one_line_not_a_traceback(bottle_dir, tmp_path):
    data = small_bottle(bottle_dir, tmp_path / "bottle")
    no_train = tmp_path / "no-train"
    shutil.copytree(data / "test", no_train / "test")
    for args, words in [((str(OLD_BOTTLE_MODEL), str(data), "--multiples", "1,two"), "numbers separated by commas"),
                        ((str(tmp_path / "nope.onnx"), str(data)), "nope.onnx does not exist"),
                        ((str(OLD_BOTTLE_MODEL), str(no_train)), "has no images to measure"),
                        ((str(OLD_BOTTLE_MODEL), str(data), "--draws", "0"), "--draws must be 1 or more")]:
        result = run(*args)
        assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
