"""bench/defect_visibility: where a defective image's map peaks, and the recall a score that knew where to look would reach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.manifest import Manifest, manifest_path
from edge.method.roi import Roi
from tests.conftest import OLD_BOTTLE_MODEL, load_bench_script

ROOT = Path(__file__).resolve().parents[1]


def test_the_peak_is_split_at_the_widened_defect():
    script = load_bench_script("defect_visibility")
    anomaly_map = np.zeros((32, 32), np.float32)
    anomaly_map[5, 5] = 0.9  # far from the defect: a highlight that outscores it
    anomaly_map[20, 23] = 0.4  # 3 px right of the marked defect, within the smoothing's reach
    mask = np.zeros((32, 32), bool)
    mask[18:22, 18:21] = True
    assert script.split_peak(anomaly_map, script.widened(mask, 3), None) == (np.float32(0.4), np.float32(0.9))
    assert script.split_peak(anomaly_map, script.widened(mask, 1), None) == (0.0, np.float32(0.9))


def test_each_side_is_scored_as_the_image_is_when_the_score_is_the_top_pixels_mean():
    """With the mean of the top 2 % (20 of 1024 pixels), a 10-pixel defect earns half its brightness: the score
    the image would have if it alone lit up, never more than the image's own score."""
    script = load_bench_script("defect_visibility")
    anomaly_map = np.zeros((32, 32), np.float32)
    anomaly_map[20, 10:20] = 0.8  # the defect: a 10-pixel line
    anomaly_map[2:6, 2:7] = 0.1  # a faint 20-pixel patch elsewhere
    mask = np.zeros((32, 32), bool)
    mask[20, 10:20] = True
    inside, outside = script.split_peak(anomaly_map, mask, 0.02)
    assert inside == np.float32(0.4)
    assert outside == np.float32(0.1)
    assert inside <= script.image_score(anomaly_map, 0.02)


def test_it_tells_defects_caught_by_their_own_region_from_those_caught_by_luck():
    script = load_bench_script("defect_visibility")
    good = np.linspace(0.10, 0.29, 20)  # 5 % false alarms allows one: the threshold lies between 0.28 and 0.29
    defects = [
        script.Defect("a", score=0.50, inside=0.50, outside=0.20),  # seen and caught
        script.Defect("b", score=0.20, inside=0.20, outside=0.10),  # seen, under the threshold
        script.Defect("c", score=0.45, inside=0.22, outside=0.45),  # seen, caught for a peak elsewhere
        script.Defect("d", score=0.40, inside=0.05, outside=0.40),  # not seen (under the median good, 0.195), caught likewise
    ]
    s = script.summary(good, defects)
    assert (s["defects"], s["peak_inside"], s["unseen"]) == (4, 2, 1)
    assert s["recall"] == 0.75
    assert s["recall_inside"] == 0.25  # only "a" clears the threshold where its defect is


def test_it_reports_a_real_test_set(bottle_dir, tmp_path):
    data = tmp_path / "bottle"
    for folder, names in {"test/good": ["000.png", "001.png"], "test/broken_large": ["000.png"]}.items():
        (data / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(bottle_dir / folder / name, data / folder / name)
    (data / "ground_truth" / "broken_large").mkdir(parents=True)
    shutil.copy(bottle_dir / "ground_truth/broken_large/000_mask.png", data / "ground_truth/broken_large/000_mask.png")
    (data / "test" / "contamination").mkdir()  # a defect without a mask is left out, not an error
    shutil.copy(bottle_dir / "test/contamination/000.png", data / "test/contamination/000.png")

    result = subprocess.run([sys.executable, str(ROOT / "bench" / "defect_visibility"), str(data), str(OLD_BOTTLE_MODEL),
                             str(OLD_BOTTLE_MODEL), "--per-image"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{OLD_BOTTLE_MODEL.name}: 1 defective images with masks, 2 good"
    assert "peak inside the defect: 1;" in lines[1]  # a broken bottle lights up where it is broken
    assert "crack" not in result.stdout and "broken_large/000.png" in result.stdout
    assert lines[-4] == "over 2 models: mean (range)"


def test_a_test_set_without_masks_is_refused(bottle_dir, tmp_path):
    for folder in ("test/good", "test/broken_large"):
        (tmp_path / folder).mkdir(parents=True)
        shutil.copy(bottle_dir / folder / "000.png", tmp_path / folder / "000.png")
    shutil.copy(bottle_dir / "test/good/001.png", tmp_path / "test/good/001.png")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "defect_visibility"), str(tmp_path), str(OLD_BOTTLE_MODEL)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "needs good test images and defective ones with ground-truth masks" in result.stderr


def test_a_missing_model_or_test_set_is_one_line_not_a_traceback(bottle_dir, tmp_path):
    for data, model, words in [(bottle_dir, tmp_path / "nope.onnx", "nope.onnx does not exist"),
                               (tmp_path, OLD_BOTTLE_MODEL, "has no test/ folder")]:
        result = subprocess.run([sys.executable, str(ROOT / "bench" / "defect_visibility"), str(data), str(model)],
                                capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_a_model_trained_on_an_roi_is_scored_on_its_roi(bottle_dir, tmp_path):
    """The same bottle and mask, alone or placed in a larger conveyor frame whose ROI the model was trained on:
    the same numbers, because both frame and mask are cut to the ROI first (trainer.evaluate.score_items)."""
    x, y = 400, 60
    plain, framed = tmp_path / "plain", tmp_path / "framed"
    for folder, name in [("test/good", "000.png"), ("test/good", "001.png"), ("test/broken_large", "000.png"),
                         ("ground_truth/broken_large", "000_mask.png")]:
        image = cv2.imread(str(bottle_dir / folder / name), cv2.IMREAD_UNCHANGED)
        for root in (plain, framed):
            (root / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(plain / folder / name), image)
        conveyor = np.full((1000, 1400, *image.shape[2:]), 90 if image.ndim == 3 else 0, np.uint8)
        conveyor[y : y + image.shape[0], x : x + image.shape[1]] = image
        conveyor[400:500, 30:130] = 255  # a bright patch outside the ROI, which the model must not see
        cv2.imwrite(str(framed / folder / name), conveyor)
    roi_model = tmp_path / "bottle-roi.onnx"
    shutil.copy(OLD_BOTTLE_MODEL, roi_model)
    manifest = Manifest.read(manifest_path(OLD_BOTTLE_MODEL))
    manifest.model_file, manifest.roi = roi_model.name, Roi(x, y, 900, 900).as_dict()
    manifest.save(manifest_path(roi_model))

    script = load_bench_script("defect_visibility")
    good, (defect,) = script.score_test_set(OLD_BOTTLE_MODEL, plain)
    good_in_roi, (defect_in_roi,) = script.score_test_set(roi_model, framed)
    np.testing.assert_allclose(good_in_roi, good, rtol=1e-5)
    np.testing.assert_allclose([defect_in_roi.inside, defect_in_roi.outside], [defect.inside, defect.outside], rtol=1e-5)
    assert defect.inside > defect.outside  # the bottle's break is where its map peaks


def test_the_split_is_of_what_the_score_counts(bottle_dir, tmp_path):
    """The bundled model's score weighs the map by the good maps' spread: the defect's region and the
    rest are scored on that weighted map, so neither earns more than the image's own score."""
    data = tmp_path / "bottle"
    for folder, names in {"test/good": ["000.png", "001.png"], "test/broken_large": ["000.png"],
                          "ground_truth/broken_large": ["000_mask.png"]}.items():
        (data / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(bottle_dir / folder / name, data / folder / name)
    model = ROOT / "engines" / "bottle-cpu.onnx"
    assert Manifest.for_model(model).score_weight is not None
    _, (defect,) = load_bench_script("defect_visibility").score_test_set(model, data)
    assert 0 < defect.outside <= defect.inside <= defect.score + 1e-9
