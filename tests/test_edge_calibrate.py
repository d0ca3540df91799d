"""`riad-edge calibrate`: the threshold set again from a folder of good parts, on real bottle images."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.calibrate import lone_outlier
from edge.cli import app
from edge.manifest import Manifest, manifest_path
from edge.method.preprocess import prepare, read_image
from edge.method.roi import Roi
from edge.method.threshold import threshold_from_scores
from tests.conftest import fill, write_foreign_engine, write_tiny_onnx

runner = CliRunner()


@pytest.fixture
def good_folder(bottle_dir, tmp_path) -> Path:
    folder = tmp_path / "line-good"
    folder.mkdir()
    for path in sorted((bottle_dir / "test" / "good").glob("*.png"))[:5]:
        shutil.copy(path, folder)
    return folder


def scores_by_hand(model: Path, folder: Path, roi: Roi | None = None) -> list[float]:
    """Each image as the edge prepares a frame, through the CPU backend: an independent path."""
    with OnnxCpuBackend(model, threads=1) as backend:
        scores = []
        for path in sorted(folder.glob("*.png")):
            image = read_image(path)
            scored = backend.score(prepare(roi.view(image) if roi else image, backend.manifest.input_shape))
            # With a ROI the station places the crop's map in the frame and scores that map: the
            # mean of the top 1 % of the crop's pixels there (the tiny model's score).
            if roi:
                placed = roi.to_frame(scored.anomaly_map, image.shape)
                top = round(0.01 * roi.pixels_in_frame_map(scored.anomaly_map.shape, image.shape))
                scores.append(float(np.sort(placed.ravel())[-top:].mean()))
            else:
                scores.append(scored.score)
    return scores


def calibrate(*args: object):
    return runner.invoke(app, ["calibrate", *map(str, args)])


def test_sets_the_threshold_from_the_folders_scores(tiny_onnx_model, good_folder):
    before = Manifest.for_model(tiny_onnx_model)
    expected = threshold_from_scores(scores_by_hand(tiny_onnx_model, good_folder))

    result = calibrate(tiny_onnx_model, good_folder)

    assert result.exit_code == 0, result.output
    after = Manifest.for_model(tiny_onnx_model)  # the model file still matches it
    assert after.threshold == pytest.approx(expected["threshold"]) and after.threshold != before.threshold
    record = after.metrics["calibration"]
    assert record["count"] == 5 and record["images"] == str(good_folder.resolve())
    assert record["previous_threshold"] == before.threshold and record["good_max"] == pytest.approx(expected["good_max"])
    assert replace(after, threshold=before.threshold, metrics=before.metrics) == before  # nothing else changed
    assert f"{before.threshold:.4f} -> {expected['threshold']:.4f} (max(mean + 3 std, max) of their scores)" in result.output


def test_reports_the_false_alarms_the_old_threshold_raised(tmp_path, good_folder):
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    scores = sorted(scores_by_hand(model, good_folder))
    # An old threshold between the second and third highest good scores flagged two of them.
    old = (scores[-2] + scores[-3]) / 2
    write_tiny_onnx(model, threshold=old)

    result = calibrate(model, good_folder, "--false-alarm-rate", 0.2)

    assert result.exit_code == 0, result.output
    new = Manifest.for_model(model).threshold
    assert new == pytest.approx(threshold_from_scores(scores, 0.2)["threshold"])
    assert f"flagged:   2 of 5 at the old threshold, {sum(s > new for s in scores)} at the new" in result.output
    assert f"-> {new:.4f} (for 20 % false alarms, a normal fit to their scores)" in result.output


def test_dry_run_leaves_the_manifest_byte_for_byte(tiny_onnx_model, good_folder):
    before = manifest_path(tiny_onnx_model).read_bytes()
    result = calibrate(tiny_onnx_model, good_folder, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "left as it is (--dry-run)" in result.output and "->" in result.output
    assert manifest_path(tiny_onnx_model).read_bytes() == before


def test_unreadable_images_are_named_and_skipped(tiny_onnx_model, good_folder):
    readable = scores_by_hand(tiny_onnx_model, good_folder)
    (good_folder / "zz-truncated.png").write_bytes((good_folder / "000.png").read_bytes()[:2000])
    (good_folder / "zz-empty.jpg").write_bytes(b"")

    result = calibrate(tiny_onnx_model, good_folder)

    assert result.exit_code == 0, result.output
    assert "skipped:   zz-truncated.png" in result.output and "skipped:   zz-empty.jpg" in result.output
    manifest = Manifest.for_model(tiny_onnx_model)
    assert manifest.threshold == pytest.approx(threshold_from_scores(readable)["threshold"])
    assert manifest.metrics["calibration"]["skipped"] == 2


def test_a_folder_of_many_unreadable_files_is_summed_up(tiny_onnx_model, good_folder):
    for i in range(8):
        (good_folder / f"zz-broken-{i}.png").write_bytes(b"not a png")
    result = calibrate(tiny_onnx_model, good_folder, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("cannot decode image") == 5 and "skipped:   3 more unreadable images" in result.output


def test_scores_through_the_models_roi(tiny_onnx_model, good_folder):
    # A model trained on a crop scores only that crop of each frame, as the station does.
    roi = Roi.parse("100,200,600,500")
    manifest = Manifest.for_model(tiny_onnx_model)
    manifest.roi = roi.as_dict()
    manifest.save(manifest_path(tiny_onnx_model))

    result = calibrate(tiny_onnx_model, good_folder)

    assert result.exit_code == 0, result.output
    cropped = threshold_from_scores(scores_by_hand(tiny_onnx_model, good_folder, roi))["threshold"]
    whole = threshold_from_scores(scores_by_hand(tiny_onnx_model, good_folder))["threshold"]
    assert Manifest.for_model(tiny_onnx_model).threshold == pytest.approx(cropped)
    assert cropped != pytest.approx(whole)


@pytest.mark.parametrize("folder", ["missing", "empty", "one image", "a file"])
def test_a_folder_without_two_images_is_refused_with_exit_3(tiny_onnx_model, good_folder, tmp_path, folder):
    path = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "one image": tmp_path / "one", "a file": good_folder / "000.png"}[folder]
    if folder == "empty":
        path.mkdir()
    if folder == "one image":
        path.mkdir()
        shutil.copy(good_folder / "000.png", path)
    before = manifest_path(tiny_onnx_model).read_bytes()

    result = calibrate(tiny_onnx_model, path)

    assert result.exit_code == 3, result.output
    assert "error:" in result.output and str(path.name) in result.output
    assert manifest_path(tiny_onnx_model).read_bytes() == before


@pytest.mark.parametrize("rate", ["0", "1", "-0.1", "nan"])
def test_a_false_alarm_rate_outside_zero_to_one_is_refused(tiny_onnx_model, good_folder, rate):
    result = calibrate(tiny_onnx_model, good_folder, "--false-alarm-rate", rate)
    assert result.exit_code == 2 and "between 0 and 1" in result.output


def test_a_model_that_does_not_match_its_manifest_is_refused(tiny_onnx_model, good_folder):
    with open(tiny_onnx_model, "ab") as model:
        model.write(b"\0")
    result = calibrate(tiny_onnx_model, good_folder)
    assert result.exit_code == 2 and "does not match its manifest" in result.output


def test_an_engine_is_not_calibrated_with_its_cpu_twin(tiny_onnx_model, good_folder):
    # Without a GPU the engine would run the ONNX model it was built from, whose scores are not the engine's.
    engine = write_foreign_engine(tiny_onnx_model)
    before = manifest_path(engine).read_bytes()
    result = calibrate(engine, good_folder)
    assert result.exit_code == 2, result.output
    assert "calibrate the engine on the device it was built for" in result.output
    assert manifest_path(engine).read_bytes() == before


def test_a_full_disk_keeps_the_old_manifest(tiny_disk, good_folder):
    model = write_tiny_onnx(tiny_disk / "tiny.onnx")
    before = manifest_path(model).read_bytes()
    fill(tiny_disk)

    result = calibrate(model, good_folder)

    assert result.exit_code == 2, result.output
    assert "the old manifest is intact" in result.output
    assert manifest_path(model).read_bytes() == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "tiny.onnx", "tiny.onnx.json"]


def test_a_defective_part_among_the_good_ones_is_named(bottle_dir, good_folder, tmp_path):
    # The bundled model, trained on bottle: a broken bottle scores far above good ones.
    engines = Path(__file__).resolve().parents[1] / "engines"
    model = tmp_path / "bottle-cpu.onnx"
    for name in (model.name, model.name + ".json"):
        shutil.copy(engines / name, tmp_path / name)
    clean = calibrate(model, good_folder, "--dry-run")
    assert clean.exit_code == 0 and "check:" not in clean.output, clean.output
    shutil.copy(bottle_dir / "test" / "broken_large" / "000.png", good_folder / "zz-broken.png")

    result = calibrate(model, good_folder)

    assert result.exit_code == 0, result.output  # written anyway: whether it is a good part is the user's call
    check = next(line for line in result.output.splitlines() if line.startswith("check:"))
    assert check.startswith("check:     zz-broken.png scores ") and "the other 5 images average" in check
    assert "remove it and calibrate again" in check
    assert Manifest.for_model(model).metrics["calibration"]["outlier"] == "zz-broken.png"


def test_only_an_image_far_above_the_rest_is_named():
    good = {Path(f"{i}.png"): 0.010 + 0.001 * (i % 5) for i in range(100)}  # 0.010 to 0.014
    assert lone_outlier(good) is None
    # The top of a large folder a little above the threshold the rest set: not named.
    assert threshold_from_scores(list(good.values()))["threshold"] == pytest.approx(0.0163, abs=1e-4)
    assert lone_outlier({**good, Path("top.png"): 0.017}) is None
    assert lone_outlier({**good, Path("top.png"): 0.030})[:1] == (Path("top.png"),)
    assert lone_outlier({Path("a.png"): 0.01, Path("b.png"): 0.5}) is None  # one other image has no spread


def test_the_edge_runs_with_the_new_threshold(tiny_onnx_model, good_folder):
    assert calibrate(tiny_onnx_model, good_folder).exit_code == 0
    threshold = Manifest.for_model(tiny_onnx_model).threshold

    result = runner.invoke(app, ["run", "--source", str(good_folder), "--model", str(tiny_onnx_model)])

    assert result.exit_code == 0, result.output
    assert "5 frames, 0 defective" in result.output  # no good part it was calibrated on raises an alarm
    assert f"> {threshold:.4f}" not in result.output


def test_calibrates_on_the_frames_run_saved_leaving_out_their_overlays(tiny_onnx_model, good_folder, tmp_path):
    # How a line collects good parts: run at threshold 0 saves every frame, with its heatmap overlay.
    saved = tmp_path / "saved"
    collect = runner.invoke(app, ["run", "--source", str(good_folder), "--model", str(tiny_onnx_model),
                                  "--threshold", "0", "--save-dir", str(saved)])  # fmt: skip
    assert collect.exit_code == 0, collect.output
    frames = sorted(saved.glob("*_frame.jpg"))
    assert len(frames) == 5 and len(list(saved.glob("*_overlay.jpg"))) == 5

    result = calibrate(tiny_onnx_model, saved)

    assert result.exit_code == 0, result.output
    assert "skipped:   5 heatmap overlays" in result.output
    with OnnxCpuBackend(tiny_onnx_model, threads=1) as backend:
        shape = backend.manifest.input_shape
        expected = threshold_from_scores([backend.score(prepare(read_image(p), shape)).score for p in frames])
    calibration = Manifest.for_model(tiny_onnx_model).metrics["calibration"]
    assert calibration["count"] == 5 and calibration["overlays_skipped"] == 5
    assert Manifest.for_model(tiny_onnx_model).threshold == pytest.approx(expected["threshold"])
