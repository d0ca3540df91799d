"""The test-set reader and `riad-trainer evaluate` on a small copy of the bottle category."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_tiny_onnx
from typer.testing import CliRunner

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, manifest_path
from edge.method.roi import Roi
from edge.method.preprocess import prepare, read_image
from trainer.cli import app
from trainer.evaluate import FALSE_ALARM_RATES, LINE_FALSE_ALARM_RATE, evaluate, markdown_table, prepared_good_images, prepared_items, recall_at_false_alarms
from trainer.plots import Axes
from trainer.testset import TestSetError, load_test_set, read_mask
from tests.conftest import DATA, OLD_BOTTLE_MODEL

DEFECTS = ["broken_large", "contamination"]
KOLEKTOR = DATA / "kolektorsdd"


@pytest.fixture
def category(tmp_path, bottle_dir) -> Path:
    """MVTec layout with 2 good and 2 defective (one per defect type) bottle images."""
    root = tmp_path / "bottle"
    (root / "test" / "good").mkdir(parents=True)
    for name in ["000.png", "001.png"]:
        shutil.copy(bottle_dir / "test" / "good" / name, root / "test" / "good" / name)
    for defect in DEFECTS:
        (root / "test" / defect).mkdir()
        (root / "ground_truth" / defect).mkdir(parents=True)
        shutil.copy(bottle_dir / "test" / defect / "000.png", root / "test" / defect / "000.png")
        shutil.copy(bottle_dir / "ground_truth" / defect / "000_mask.png", root / "ground_truth" / defect / "000_mask.png")
    return root


def test_test_set_lists_images_with_their_masks(category):
    items = load_test_set(category)

    assert [(i.defect_type, i.image_path.name) for i in items] == [
        ("broken_large", "000.png"),
        ("contamination", "000.png"),
        ("good", "000.png"),
        ("good", "001.png"),
    ]
    assert items[0].mask_path == category / "ground_truth" / "broken_large" / "000_mask.png"
    assert items[2].mask_path is None and not items[2].is_defective
    assert not read_mask(items[2], (900, 900, 3)).any()
    defect = read_mask(items[0], (900, 900, 3))
    assert defect.dtype == bool and 0 < defect.mean() < 0.5


def test_test_images_are_listed_in_natural_order_as_the_edge_reads_them(category):
    good = category / "test" / "good"
    for name in ["000.png", "001.png"]:
        (good / name).rename(good / name.replace("00", "img"))  # img0.png, img1.png
    shutil.copy(good / "img1.png", good / "img10.png")
    cv2.imwrite(str(good / "img2.webp"), read_image(good / "img1.png"))

    names = [i.image_path.name for i in load_test_set(category) if i.defect_type == "good"]

    assert names == ["img0.png", "img1.png", "img2.webp", "img10.png"]


@pytest.fixture
def bottle_without_masks(tmp_path, bottle_dir) -> Path:
    """What most users have: a folder of good parts (here `OK`) and one of bad ones, any name, no masks."""
    root = tmp_path / "my line"
    for folder, source, names in [
        ("OK", "good", ["000.png", "001.png", "002.png"]),
        ("Kaputt (2024-03)", "broken_large", ["000.png", "001.png"]),
        ("dirt", "contamination", ["000.png"]),
    ]:
        (root / "test" / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(bottle_dir / "test" / source / name, root / "test" / folder / name)
    return root


@pytest.fixture
def kolektor_without_masks(tmp_path) -> Path:
    """Grey, tall JPEG parts: good ones in `good`, cracked ones in `rejects`, no ground_truth/."""
    if not (KOLEKTOR / "test" / "crack").is_dir():
        pytest.skip(f"KolektorSDD not found at {KOLEKTOR}")
    root = tmp_path / "kolektor"
    for folder, source in [("good", "good"), ("rejects", "crack")]:
        (root / "test" / folder).mkdir(parents=True)
        for image in sorted((KOLEKTOR / "test" / source).glob("*.jpg"))[:3]:
            shutil.copy(image, root / "test" / folder / image.name)
    return root


def test_defective_images_without_masks_are_read_with_unknown_pixels(bottle_without_masks):
    items = load_test_set(bottle_without_masks)
    assert [(i.defect_type, i.image_path.name) for i in items] == [
        ("Kaputt (2024-03)", "000.png"), ("Kaputt (2024-03)", "001.png"),
        ("good", "000.png"), ("good", "001.png"), ("good", "002.png"), ("dirt", "000.png"),
    ]  # fmt: skip  (folders sorted by name: capitals first)
    assert all(i.mask_path is None for i in items)
    assert [i.has_pixel_labels for i in items] == [False, False, True, True, True, False]
    assert read_mask(items[0], (900, 900, 3)) is None  # unknown, not defect-free
    assert not read_mask(items[2], (900, 900, 3)).any()


def test_a_missing_mask_leaves_that_image_out_of_the_pixel_metrics_only(category):
    (category / "ground_truth" / "contamination" / "000_mask.png").unlink()
    items = load_test_set(category)
    assert [(i.defect_type, i.has_pixel_labels) for i in items] == [
        ("broken_large", True), ("contamination", False), ("good", True), ("good", True),
    ]  # fmt: skip


def test_a_broken_mask_is_still_an_error(category):
    mask = category / "ground_truth" / "contamination" / "000_mask.png"
    mask.write_bytes(mask.read_bytes()[:100])
    with pytest.raises(TestSetError, match=r"cannot decode image .*contamination/000_mask\.png"):
        load_test_set(category)


def test_hidden_folders_are_no_defect_type(bottle_without_masks):
    hidden = bottle_without_masks / "test" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(bottle_without_masks / "test" / "dirt" / "000.png", hidden / "000.png")
    assert {i.defect_type for i in load_test_set(bottle_without_masks)} == {"good", "dirt", "Kaputt (2024-03)"}


def test_btad_layout_ok_folders_and_masks_named_like_their_images(category, bottle_dir):
    """BTAD: good images in `ok`, masks named as their image (ground_truth/ko/0000.png)."""
    (category / "test" / "good").rename(category / "test" / "ok")
    for defect in DEFECTS:
        masks = category / "ground_truth" / defect
        (masks / "000_mask.png").rename(masks / "000.png")
    items = load_test_set(category)
    assert [(i.defect_type, i.mask_path.name if i.mask_path else None) for i in items] == [
        ("broken_large", "000.png"), ("contamination", "000.png"), ("good", None), ("good", None),
    ]  # fmt: skip
    expected = read_image(bottle_dir / "ground_truth" / "broken_large" / "000_mask.png") > 127
    np.testing.assert_array_equal(read_mask(items[0], (900, 900, 3)), expected)


def test_mvtec_loco_layout_unites_the_masks_of_an_image(category, bottle_dir):
    """MVTec LOCO: ground_truth/<defect>/<image stem>/000.png, 001.png..., one per region."""
    masks = category / "ground_truth" / "broken_large"
    whole = read_image(masks / "000_mask.png")
    (masks / "000_mask.png").unlink()
    (masks / "000").mkdir()
    left, right = whole.copy(), whole.copy()
    left[:, 450:] = 0
    right[:, :450] = 0
    cv2.imwrite(str(masks / "000" / "000.png"), left)
    cv2.imwrite(str(masks / "000" / "001.png"), right)
    item = load_test_set(category)[0]
    assert item.mask_path == masks / "000"
    united = read_mask(item, (900, 900, 3))
    np.testing.assert_array_equal(united, whole > 127)
    assert united[:, :450].any() and united[:, 450:].any()  # both halves held a region


def test_a_mask_of_the_wrong_size_names_both_files(category):
    mask = category / "ground_truth" / "broken_large" / "000_mask.png"
    cv2.imwrite(str(mask), cv2.resize(cv2.imread(str(mask)), (450, 450), interpolation=cv2.INTER_NEAREST))
    with pytest.raises(TestSetError, match=r"000_mask\.png is 450x450 but its image .*000\.png is 900x900"):
        load_test_set(category)


@pytest.mark.parametrize("folder", ["good", "contamination"])
def test_a_broken_test_image_is_named_before_any_scoring(category, folder):
    broken = category / "test" / folder / "000.png"
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated copy, as an interrupted download leaves it
    with pytest.raises(TestSetError, match=rf"cannot decode image .*{folder}/000\.png"):
        load_test_set(category)


def test_a_zero_one_mask_reads_like_a_zero_255_mask(category):
    item = load_test_set(category)[0]
    expected = read_mask(item, (900, 900))
    cv2.imwrite(str(item.mask_path), expected.astype(np.uint8))  # 0/1 instead of 0/255
    assert np.array_equal(read_mask(item, (900, 900)), expected)


def test_a_folder_of_good_images_has_no_test_set(bottle_dir):
    with pytest.raises(TestSetError, match="only allows calibrating"):
        load_test_set(bottle_dir / "train" / "good")


def test_a_folder_of_good_and_bad_parts_and_a_test_folder_given_itself_are_test_sets(category, tmp_path):
    """What users have: parts/good and parts/bad, no test/ level and no masks; or an MVTec
    category's test/ folder given itself, whose masks lie beside it."""
    items = load_test_set(category / "test")
    assert [(i.defect_type, i.image_path.name, i.mask_path) for i in items] == [
        (i.defect_type, i.image_path.name, i.mask_path) for i in load_test_set(category)
    ]
    assert items[0].mask_path == category / "ground_truth" / "broken_large" / "000_mask.png"

    parts = tmp_path / "parts"
    shutil.copytree(category / "test" / "good", parts / "OK")
    shutil.copytree(category / "test" / "broken_large", parts / "bad")
    items = load_test_set(parts)
    assert [(i.defect_type, i.image_path.name, i.mask_path) for i in items] == [  # folders in name order, OK first
        ("good", "000.png", None), ("good", "001.png", None), ("bad", "000.png", None)
    ]
    # Masks in the folder's own ground_truth/, which is no defect type.
    shutil.copytree(category / "ground_truth" / "broken_large", parts / "ground_truth" / "bad")
    items = load_test_set(parts)
    assert [i.defect_type for i in items] == ["good", "good", "bad"]
    assert items[2].mask_path == parts / "ground_truth" / "bad" / "000_mask.png"


def test_evaluate_reads_a_folder_of_good_and_bad_parts_from_the_command_line(category, tiny_onnx_model, tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(category / "test" / "good", parts / "good")
    shutil.copytree(category / "test" / "contamination", parts / "bad")
    result = CliRunner().invoke(app, ["evaluate", str(tiny_onnx_model), str(parts), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["category"] == "parts" and [d for d in metrics["per_defect"]] == ["bad"]
    assert "not measured" in result.output  # no masks: the pixel metrics are not guessed
    # The test folder itself is named after its category.
    result = CliRunner().invoke(app, ["evaluate", str(tiny_onnx_model), str(category / "test"), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["category"] == "bottle"


def test_a_test_set_needs_good_and_defective_images(category):
    shutil.rmtree(category / "test" / "good")
    with pytest.raises(TestSetError, match="no good images"):
        load_test_set(category)
    (category / "test" / "good").mkdir()
    shutil.copy(category / "test" / "broken_large" / "000.png", category / "test" / "good" / "000.png")
    for defect in DEFECTS:
        shutil.rmtree(category / "test" / defect)
    with pytest.raises(TestSetError, match="no defective images"):
        load_test_set(category)


def test_evaluate_measures_the_onnx_model_as_the_edge_runs_it(category, tiny_onnx_model, tmp_path):
    out = tmp_path / "eval"
    report = evaluate(tiny_onnx_model, category, out)

    # The scores are those of the edge's own preprocessing and backend.
    with OnnxCpuBackend(tiny_onnx_model, threads=1) as backend:
        for image in report["images"]:
            frame = read_image(category / image["image"])
            assert image["score"] == pytest.approx(backend.score(prepare(frame, (64, 64))).score, rel=1e-6)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == report
    assert set(report["per_defect"]) == set(DEFECTS)
    for metrics in [report["overall"], *report["per_defect"].values()]:
        for key in ["image_auroc", "pixel_auroc", "pro"]:
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["good_images"] == 2
    assert report["overall"]["defective_images"] == 2
    assert report["per_defect"]["contamination"]["defective_images"] == 1

    table = (out / "metrics.md").read_text()
    assert "| **all** | 2 |" in table and "| broken_large | 1 |" in table and "| contamination | 1 |" in table
    assert f"{report['overall']['image_auroc']:.3f}" in table

    for image in report["images"]:
        stem = Path(image["image"]).stem
        overlay = cv2.imread(str(out / "overlays" / image["defect_type"] / f"{stem}.jpg"))
        assert overlay is not None and overlay.shape == (900, 900, 3)

    # The headline metrics travel with the model, whose manifest still checks out.
    evaluation = Manifest.for_model(tiny_onnx_model).metrics["evaluation"]
    assert evaluation["image_auroc"] == report["overall"]["image_auroc"]
    assert evaluation["test_set"] == "bottle"


def test_research_scripts_read_a_test_set_cut_to_the_models_roi(category, tmp_path):
    """prepared_items and prepared_good_images (the bench/ research scripts): a bottle placed in
    a larger frame, read for a model trained on its ROI, gives the image and mask of the bottle alone."""
    x, y = 300, 40
    framed = tmp_path / "framed"
    for source in category.rglob("*.png"):
        image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        canvas = np.full((1000, 1300, *image.shape[2:]), 255 if image.ndim == 3 else 0, np.uint8)
        canvas[y : y + image.shape[0], x : x + image.shape[1]] = image
        target = framed / source.relative_to(category)
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), canvas)
    plain = replace(Manifest.read(manifest_path(OLD_BOTTLE_MODEL)), input_height=48, input_width=48)
    in_roi = replace(plain, roi=Roi(x, y, 900, 900).as_dict())

    alone = list(prepared_items(load_test_set(category), plain))
    cut = list(prepared_items(load_test_set(framed), in_roi))
    assert [item.image_path.name for item, _, _ in cut] == [item.image_path.name for item, _, _ in alone]
    for (item, image, mask), (_, image_in_roi, mask_in_roi) in zip(alone, cut):
        assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
        assert mask.any() == item.is_defective  # a good image's mask is all clear
        np.testing.assert_allclose(image_in_roi, image, atol=1e-6)
        np.testing.assert_array_equal(mask_in_roi, mask)
    uncut = next(prepared_items(load_test_set(framed), plain))[1]
    assert not np.allclose(uncut, alone[0][1], atol=0.05)  # without the ROI the frame's white margins are in

    goods = sorted((category / "test" / "good").glob("*.png"))
    good_images = prepared_good_images([framed / p.relative_to(category) for p in goods], in_roi)
    assert good_images.shape == (len(goods), 3, 48, 48)
    np.testing.assert_allclose(good_images, prepared_good_images(goods, plain), atol=1e-6)
    from_items = {item.image_path.resolve(): image for item, image, _ in alone}
    np.testing.assert_allclose(good_images, [from_items[p.resolve()] for p in goods], atol=1e-6)


def test_decisions_follow_the_manifest_threshold(category, tmp_path):
    flag_all = evaluate(write_tiny_onnx(tmp_path / "low.onnx", threshold=0.0), category, tmp_path / "low", overlays=False)
    assert flag_all["overall"]["recall"] == 1.0 and flag_all["overall"]["false_alarm_rate"] == 1.0
    assert flag_all["overall"]["precision"] == 0.5
    assert not (tmp_path / "low" / "overlays").exists()

    flag_none = evaluate(write_tiny_onnx(tmp_path / "high.onnx", threshold=1e9), category, tmp_path / "high", False)
    assert flag_none["overall"]["recall"] == 0.0 and flag_none["overall"]["false_alarm_rate"] == 0.0
    assert flag_none["overall"]["precision"] is None
    assert "precision n/a" in (tmp_path / "high" / "metrics.md").read_text()


def test_cli_evaluate_prints_the_table(category, tiny_onnx_model, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(tiny_onnx_model), str(category), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "| **all** | 2 |" in result.output
    assert "on the image score, the mean of the anomaly map's highest 1 % of pixels." in result.output
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_cli_evaluate_rejects_bad_input_clearly(category, tiny_onnx_model, bottle_dir, tmp_path):
    runner = CliRunner()
    plain = runner.invoke(app, ["evaluate", str(tiny_onnx_model), str(bottle_dir / "train" / "good")])
    assert plain.exit_code == 2 and "only allows calibrating" in plain.output

    missing = runner.invoke(app, ["evaluate", str(tiny_onnx_model), str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    engine = runner.invoke(app, ["evaluate", str(tmp_path / "model.plan"), str(category)])
    assert engine.exit_code == 2 and "not an ONNX model" in engine.output

    tiny_onnx_model.with_name("tiny.onnx.json").unlink()
    no_manifest = runner.invoke(app, ["evaluate", str(tiny_onnx_model), str(category), "--no-overlays"])
    assert no_manifest.exit_code == 2 and "no manifest" in no_manifest.output


def test_evaluate_without_masks_measures_images_and_marks_pixels_not_measured(bottle_without_masks, tmp_path):
    out = tmp_path / "eval"
    report = evaluate(write_tiny_onnx(tmp_path / "tiny.onnx"), bottle_without_masks, out)

    for metrics in [report["overall"], *report["per_defect"].values()]:
        assert 0.0 <= metrics["image_auroc"] <= 1.0
        assert metrics["pixel_auroc"] is None and metrics["pro"] is None
        assert metrics["defective_images_with_masks"] == 0 and metrics["good_images"] == 3
    assert report["overall"]["defective_images"] == 3
    assert set(report["per_defect"]) == {"Kaputt (2024-03)", "dirt"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["overall"]["pixel_auroc"] is None  # null in JSON
    table = (out / "metrics.md").read_text()
    assert "Pixel metrics not measured: no defective image has a mask" in table
    assert "| **all** | 3 | " in table and "| not measured | not measured |" in table
    assert "| dirt | 1 |" in table
    # Overlays carry no ground truth outline, and sit in a folder per defect type.
    assert cv2.imread(str(out / "overlays" / "Kaputt (2024-03)" / "001.jpg")).shape == (900, 900, 3)


def test_evaluate_on_grey_tall_jpeg_parts_without_masks(kolektor_without_masks, tmp_path):
    report = evaluate(write_tiny_onnx(tmp_path / "tiny.onnx"), kolektor_without_masks, tmp_path / "eval", False)
    assert report["overall"]["defective_images"] == 3 and report["overall"]["good_images"] == 3
    assert report["overall"]["pixel_auroc"] is None and set(report["per_defect"]) == {"rejects"}
    assert (tmp_path / "eval" / "roc.png").is_file() and (tmp_path / "eval" / "scores.png").is_file()


def test_masks_that_exist_are_used_for_their_images(category, tmp_path):
    """contamination loses its mask: broken_large keeps its pixel metrics, and the overall ones use it alone."""
    (category / "ground_truth" / "contamination" / "000_mask.png").unlink()
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    report = evaluate(model, category, tmp_path / "eval", overlays=False)
    assert report["per_defect"]["contamination"]["pixel_auroc"] is None
    only_broken = evaluate(model, _without(category, "contamination", tmp_path), tmp_path / "eval2", overlays=False)
    for key in ["pixel_auroc", "pro"]:
        assert report["overall"][key] == pytest.approx(only_broken["overall"][key])
        assert report["per_defect"]["broken_large"][key] == pytest.approx(only_broken["overall"][key])
    assert report["overall"]["defective_images"] == 2 and report["overall"]["defective_images_with_masks"] == 1
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "on the 1 of 2 defective images that have a mask" in table
    assert "| contamination | 1 | " in table and "| not measured | not measured |" in table


def test_an_all_black_mask_is_named_in_the_report(category, tmp_path):
    """A mask exported wrongly (all zero) says nothing is defective there: the report says so instead of a bare n/a."""
    for mask in (category / "ground_truth").glob("*/*.png"):
        cv2.imwrite(str(mask), np.zeros_like(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)))
    report = evaluate(write_tiny_onnx(tmp_path / "tiny.onnx"), category, tmp_path / "eval", overlays=False)
    assert report["overall"]["pixel_auroc"] is None and report["overall"]["defective_masks_empty"] == 2
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "2 of those masks mark no defect pixel at that resolution (all black" in table
    assert "pixel metrics need at least one marked pixel; check ground_truth/." in table


def _without(category: Path, defect: str, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / category.name
    shutil.copytree(category, copy)
    shutil.rmtree(copy / "test" / defect)
    return copy


def test_evaluate_offers_thresholds_for_false_alarm_rates(bottle_without_masks, tmp_path):
    out = tmp_path / "eval"
    report = evaluate(write_tiny_onnx(tmp_path / "tiny.onnx"), bottle_without_masks, out, overlays=False)
    choices = report["threshold_choices"]
    assert [c["target_false_alarm_rate"] for c in choices] == list(FALSE_ALARM_RATES)
    good = [i["score"] for i in report["images"] if i["defect_type"] == "good"]
    bad = [i["score"] for i in report["images"] if i["defect_type"] != "good"]
    for choice in choices:
        # Recomputed from the per-image scores: what that threshold would flag.
        assert choice["false_positives"] == sum(s > choice["threshold"] for s in good)
        assert choice["true_positives"] == sum(s > choice["threshold"] for s in bad)
        assert choice["false_positives"] <= choice["target_false_alarm_rate"] * 3
    assert choices[0]["threshold"] >= max(good)
    # The benchmarks' "recall at the line's false-alarm budget" is that table's 5 % row.
    line_row = choices[FALSE_ALARM_RATES.index(LINE_FALSE_ALARM_RATE)]
    assert recall_at_false_alarms(report) == (line_row["recall"], line_row["false_alarm_rate"])
    assert recall_at_false_alarms(report, 0.0) == (choices[0]["recall"], choices[0]["false_alarm_rate"])
    table = (out / "metrics.md").read_text()
    assert "### Choosing a threshold" in table
    assert f"| 20.0% | {choices[-1]['threshold']!r} | {choices[-1]['false_positives']}/3 " in table
    assert "![ROC curve](roc.png)" in table


@pytest.mark.parametrize(("threshold", "corner"), [(0.0, (1.0, 1.0)), (1e9, (0.0, 0.0))])
def test_the_roc_plot_marks_the_manifest_threshold(bottle_without_masks, tmp_path, threshold, corner):
    """Flag-everything sits at the top right of the ROC plot, flag-nothing at the bottom left; red dot there."""
    out = tmp_path / "eval"
    report = evaluate(write_tiny_onnx(tmp_path / "m.onnx", threshold=threshold), bottle_without_masks, out, False)
    roc, histogram = (cv2.imread(str(out / name)) for name in ("roc.png", "scores.png"))
    assert report["plots"] == {"roc": "roc.png", "histogram": "scores.png"}
    assert roc.shape == histogram.shape == (580, 760, 3)
    u, v = Axes(0, 1, 0, 1).px(*corner)
    b, g, r = roc[v - 3 : v + 4, u - 3 : u + 4].reshape(-1, 3).mean(axis=0)
    assert r > 180 and g < 90 and b < 90  # the red dot
    assert (histogram.reshape(-1, 3).std(axis=0) > 10).all()  # bars drawn, not a blank canvas


def test_cli_evaluate_without_masks(bottle_without_masks, tiny_onnx_model, tmp_path):
    args = ["evaluate", str(tiny_onnx_model), str(bottle_without_masks), "--out", str(tmp_path / "e"), "--no-overlays"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Pixel metrics not measured" in result.output and "Choosing a threshold" in result.output
    assert f"written to {tmp_path / 'e'}: metrics.md, metrics.json, roc.png, scores.png" in result.output


def test_a_test_set_with_one_good_image_is_told_in_the_singular(category, tiny_onnx_model, tmp_path):
    (category / "test" / "good" / "001.png").unlink()
    table = markdown_table(evaluate(tiny_onnx_model, category, tmp_path / "eval", overlays=False))
    assert "false alarms on this one good image within each rate" in table and "these 1 good" not in table
