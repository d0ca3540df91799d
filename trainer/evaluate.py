"""Measure an exported model on an MVTec AD test set, exactly as the edge box would run it.

The ONNX file goes through the edge's own code (edge.method.preprocess, OnnxCpuBackend, the
manifest's threshold), so the numbers describe what runs by the line, not the torch
model before export.

Masks are optional: without them the image metrics are measured and the pixel metrics
are reported as not measured (None). Where some defective images have masks, the pixel
metrics are measured on those and the good images.

Pixel metrics are computed at the model's resolution, where the map is made: each
ground-truth mask is resized to the map's H x W with nearest neighbour (no new soft edges; a
region thinner than one map pixel can vanish, as it would for the detector too).
Upsampling the map to the image size would only interpolate it, at many times the cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.backends.base import FrameScore
from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, manifest_path
from edge.sinks.overlay import encode_jpeg, heatmap_overlay
from edge.method.anomaly_map import describe_score
from edge.method.preprocess import read_image
from edge.method.regions import defect_boxes
from edge.paths import make_folder
from trainer.data import load_images
from trainer.metrics import (
    image_auroc,
    pixel_auroc,
    pro_score,
    roc_curve,
    threshold_counts,
    thresholds_for_false_alarm_rates,
)
from trainer.plots import draw_roc, draw_score_histogram
from trainer.testset import MASK_LAYOUTS, TestItem, load_test_set, name_of_test_set, read_mask

MAX_FPR = 0.3
# The false-alarm rates a line is offered a threshold for, from none to one part in five.
FALSE_ALARM_RATES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
# The trade-off a line can live with (issue 10): the benchmarks' "best recall" flags at most this share of good parts.
LINE_FALSE_ALARM_RATE = 0.05
PLOTS = {"roc": "roc.png", "histogram": "scores.png"}
GROUND_TRUTH_COLOUR = (0, 255, 0)  # BGR green, beside the overlay's red boxes


@dataclass
class ScoredImage:
    item: TestItem
    score: float
    anomaly_map: np.ndarray  # (H, W)
    mask: np.ndarray | None  # (H, W) bool ground truth at the map's resolution; None where unknown (no mask)


def evaluate(model_path: str | Path, category_dir: str | Path, out_dir: str | Path, overlays: bool = True) -> dict:
    """Score every test image, write metrics.json, metrics.md, the plots and overlays; return the report.

    The headline numbers are also stored in the model's manifest under
    metrics["evaluation"], with the test set they were measured on: the manifest travels
    with the model to the edge (and into TensorRT engines built from it), so whoever
    deploys it sees how well it detects. The manifest's sha256 is that of the .onnx
    file, which evaluation leaves untouched.
    """
    model_path, category_dir, out_dir = Path(model_path), Path(category_dir), Path(out_dir)
    items = load_test_set(category_dir)
    make_folder(out_dir)
    with OnnxCpuBackend(model_path) as backend:
        manifest = backend.manifest
        scored = []
        for item, frame, mask, result in tqdm(score_items(backend, items), total=len(items), desc="evaluating", unit="image"):
            if overlays:
                overlay_path = out_dir / "overlays" / item.defect_type / f"{item.image_path.stem}.jpg"
                write_overlay(overlay_path, frame, result, manifest.threshold, mask, manifest.counted_part(result.anomaly_map))
            map_mask = None if mask is None else at_map_size(mask, result.anomaly_map)
            scored.append(ScoredImage(item, result.score, result.anomaly_map, map_mask))

    report = build_report(model_path, category_dir, manifest, scored)
    draw_plots(out_dir, report)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "metrics.md").write_text(markdown_table(report))
    record_in_manifest(model_path, manifest, report)
    return report


def cut_to_roi(items: list[TestItem], manifest: Manifest) -> Iterator[tuple[TestItem, np.ndarray, np.ndarray | None]]:
    """Each test item as the camera gives it to a model: (item, frame, mask or None).

    A model trained on an ROI sees only it, so frame and mask are cut to the manifest's ROI.
    Every script that scores a test set reads it through here.
    """
    roi = manifest.crop
    for item in items:
        frame = read_image(item.image_path)
        mask = read_mask(item, frame.shape)
        if roi is not None:
            frame = roi.view(frame)
            mask = None if mask is None else roi.view(mask.astype(np.uint8)) > 0
        yield item, frame, mask


def score_items(
    backend: OnnxCpuBackend, items: list[TestItem]
) -> Iterator[tuple[TestItem, np.ndarray, np.ndarray | None, FrameScore]]:
    """Each test item as the edge sees it: (item, frame, mask, the edge's score of the frame)."""
    for item, frame, mask in cut_to_roi(items, backend.manifest):
        yield item, frame, mask, backend.score(backend.manifest.prepare(frame))


def prepared_items(items: list[TestItem], manifest: Manifest) -> Iterator[tuple[TestItem, np.ndarray, np.ndarray | None]]:
    """Each test item as the network takes it: (item, prepared image, mask at the map's size or None).

    For research scripts that score the network's reconstructions several ways.
    """
    for item, frame, mask in cut_to_roi(items, manifest):
        image = manifest.prepare(frame)
        yield item, image, None if mask is None else at_map_size(mask, image[0])


def prepared_good_images(paths: list, manifest: Manifest) -> np.ndarray:
    """(N, 3, H, W): good images as the network takes them, cut to the manifest's ROI as
    training and export cut them (trainer.data.load_images). For research scripts."""
    crop = manifest.crop
    return load_images([Path(p) for p in paths], manifest.input_shape, crop.spec() if crop else "", manifest.pixel_white)


def at_map_size(mask: np.ndarray, amap: np.ndarray) -> np.ndarray:
    h, w = amap.shape
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def write_overlay(path: Path, frame: np.ndarray, scored: FrameScore, threshold: float, mask: np.ndarray | None,
                  counted: np.ndarray | None = None) -> None:
    """The edge's heatmap overlay at the image's own size, the ground truth (if any) outlined in green;
    boxes, as the edge draws them, on a defective image only. `counted`: the part of the map
    the score counts (Manifest.counted_part); None or the map itself where it counts all of it."""
    amap = scored.anomaly_map
    counted = amap if counted is None else counted
    boxes = defect_boxes(counted, scored.score, threshold, frame.shape)
    image = heatmap_overlay(frame, amap, threshold, boxes, None if counted is amap else counted)
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, GROUND_TRUTH_COLOUR, max(1, round(min(image.shape[:2]) / 200)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image))


def detection_metrics(scored: list[ScoredImage], threshold: float) -> dict:
    """AUROCs, PRO and the decisions at the threshold for one group of test images.

    The pixel metrics use the images whose every pixel has a known label: the good ones and
    the defective ones with a mask. They are None where no defective image has a mask, or
    where all their regions vanish at the map's resolution.
    """
    scores = [s.score for s in scored]
    labels = [s.item.is_defective for s in scored]
    labelled = [s for s in scored if s.mask is not None]
    maps, masks = [s.anomaly_map for s in labelled], [s.mask for s in labelled]
    has_defect_pixels = any(m.any() for m in masks)
    return {
        "defective_images": sum(labels),
        "defective_images_with_masks": sum(s.item.is_defective for s in labelled),
        # All black, or a defect thinner than a map pixel: such an image adds good pixels only.
        "defective_masks_empty": sum(s.item.is_defective and not s.mask.any() for s in labelled),
        "good_images": len(labels) - sum(labels),
        "image_auroc": image_auroc(scores, labels),
        "pixel_auroc": pixel_auroc(maps, masks) if has_defect_pixels else None,
        "pro": pro_score(maps, masks, MAX_FPR) if has_defect_pixels else None,
        **threshold_counts(scores, labels, threshold),
    }


def build_report(model_path: Path, category_dir: Path, manifest: Manifest, scored: list[ScoredImage]) -> dict:
    good = [s for s in scored if not s.item.is_defective]
    defect_types = sorted({s.item.defect_type for s in scored if s.item.is_defective})
    return {
        "model": model_path.name,
        "model_sha256": manifest.model_sha256,
        "test_set": str(category_dir.resolve()),
        "category": name_of_test_set(category_dir),
        "threshold": manifest.threshold,
        "image_score": describe_score(manifest.score_top_fraction, manifest.score_reference),
        "pixel_metrics_resolution": f"{manifest.input_width}x{manifest.input_height} (ground truth resized with nearest neighbour)",
        "pro_max_fpr": MAX_FPR,
        "overall": detection_metrics(scored, manifest.threshold),
        # Thresholds for choosing one, read off this test set: riad-edge run --threshold.
        "threshold_choices": thresholds_for_false_alarm_rates(
            [s.score for s in scored], [s.item.is_defective for s in scored], FALSE_ALARM_RATES
        ),
        "plots": dict(PLOTS),
        # Each defect type against all the good images.
        "per_defect": {
            defect: detection_metrics(good + [s for s in scored if s.item.defect_type == defect], manifest.threshold)
            for defect in defect_types
        },
        "images": [
            {
                "image": s.item.image_path.relative_to(category_dir).as_posix(),
                "defect_type": s.item.defect_type,
                "score": s.score,
                "flagged": s.score > manifest.threshold,
            }
            for s in scored
        ],
    }


def draw_plots(out_dir: Path, report: dict) -> None:
    """The ROC curve with the manifest threshold's operating point, and the score histogram."""
    scores = [image["score"] for image in report["images"]]
    defective = [image["defect_type"] != "good" for image in report["images"]]
    overall, threshold = report["overall"], report["threshold"]
    false_alarm_rate, recall = roc_curve(scores, defective)
    title = f"{report['model']} on {report['category']}"
    draw_roc(
        out_dir / PLOTS["roc"], false_alarm_rate, recall, overall["image_auroc"],
        (overall["false_alarm_rate"], overall["recall"]), threshold, title,
    )  # fmt: skip
    good = [s for s, d in zip(scores, defective, strict=True) if not d]
    bad = [s for s, d in zip(scores, defective, strict=True) if d]
    draw_score_histogram(out_dir / PLOTS["histogram"], good, bad, threshold, title)


def record_in_manifest(model_path: Path, manifest: Manifest, report: dict) -> None:
    overall = report["overall"]
    headline = ["image_auroc", "pixel_auroc", "pro", "precision", "recall", "false_alarm_rate"]
    evaluation = {key: overall[key] for key in headline}
    evaluation |= {
        "test_set": report["category"],
        "good_images": overall["good_images"],
        "defective_images": overall["defective_images"],
        "threshold": report["threshold"],
    }
    manifest.metrics = {**manifest.metrics, "evaluation": evaluation}
    manifest.save(manifest_path(model_path))


def _these_good(count: int) -> str:
    return "this one good image" if count == 1 else f"these {count} good images"


def markdown_table(report: dict) -> str:
    overall = report["overall"]
    rows = [("**all**", overall)] + list(report["per_defect"].items())
    lines = [
        f"## {report['model']} on {report['category']}",
        "",
        (
            f"Threshold {report['threshold']:.4g} (from the manifest) on the image score, "
            f"{report.get('image_score', describe_score(None))}. {overall['good_images']} good and "
            f"{overall['defective_images']} defective test images; each defect type is measured against all "
            "the good ones."
        ),
        *_pixel_metrics_note(report),
        "",
        "| defect type | defective images | image AUROC | pixel AUROC | PRO | caught at threshold |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, m in rows:
        caught = f"{m['true_positives']}/{m['defective_images']} ({_percent(m['recall'])})"
        pixel_auroc, pro = (
            (_number(m["pixel_auroc"]), _number(m["pro"])) if m["defective_images_with_masks"] else ("not measured",) * 2
        )
        lines.append(
            f"| {name} | {m['defective_images']} | {_number(m['image_auroc'])} | {pixel_auroc} | {pro} | {caught} |"
        )
    lines += [
        "",
        (
            f"At the threshold: recall {_percent(overall['recall'])}, precision {_percent(overall['precision'])}, "
            f"false alarms on {overall['false_positives']} of {overall['good_images']} good images "
            f"({_percent(overall['false_alarm_rate'])})."
        ),
        "",
        "### Choosing a threshold",
        "",
        (
            f"The lowest threshold that keeps the false alarms on {_these_good(overall['good_images'])} within "
            f"each rate (one false alarm is {_percent(1 / overall['good_images'])} of them), and the defective "
            "images it catches. Read off this very test set, so optimistic for new parts; try one with "
            "`riad-edge run --threshold`."
        ),
        "",
        "| false alarms at most | threshold | false alarms | caught |",
        "|--:|--:|--:|--:|",
    ]
    for choice in report["threshold_choices"]:
        lines.append(
            f"| {_percent(choice['target_false_alarm_rate'])} | {choice['threshold']!r} "
            f"| {choice['false_positives']}/{overall['good_images']} ({_percent(choice['false_alarm_rate'])}) "
            f"| {choice['true_positives']}/{overall['defective_images']} ({_percent(choice['recall'])}) |"
        )
    plots = report["plots"]
    lines += ["", f"![ROC curve]({plots['roc']}) ![scores of good and defective images]({plots['histogram']})"]
    return "\n".join(lines) + "\n"


def _pixel_metrics_note(report: dict) -> list[str]:
    overall = report["overall"]
    masked, defective = overall["defective_images_with_masks"], overall["defective_images"]
    resolution = f"at {report['pixel_metrics_resolution']}; PRO integrated up to FPR {report['pro_max_fpr']}"
    if masked == 0:
        return [f"Pixel metrics not measured: no defective image has a mask ({MASK_LAYOUTS})."]
    if masked == defective:
        note = f"Pixel metrics {resolution}."
    else:
        note = (f"Pixel metrics {resolution}, on the {masked} of {defective} defective images that have a mask "
                f"({MASK_LAYOUTS}); the others count for the image metrics only.")
    empty = overall.get("defective_masks_empty", 0)
    if empty:
        note += (f" {empty} of those masks mark{'s' if empty == 1 else ''} no defect pixel at that resolution (all black, or a defect thinner "
                 f"than a map pixel): {'pixel metrics need at least one marked pixel; ' if empty == masked else ''}"
                 f"check ground_truth/.")
    return [note]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def recall_at_false_alarms(report: dict, max_rate: float = LINE_FALSE_ALARM_RATE) -> tuple[float, float]:
    """The best recall on the test set with at most `max_rate` of its good images flagged,
    and the false-alarm rate it comes with: the threshold a line could pick (the report's
    own threshold table, which has a row for each of FALSE_ALARM_RATES)."""
    (row,) = [r for r in report["threshold_choices"] if r["target_false_alarm_rate"] == max_rate]
    return row["recall"], row["false_alarm_rate"]


def edge_frames_per_second(model: Path, data: Path, frames: int = 24) -> float:
    """Frames/s of the CPU edge on a test set's first images, decode to score, after one warm-up frame."""
    paths = [item.image_path for item in load_test_set(data)][:frames]
    with OnnxCpuBackend(model) as backend:
        prepared = backend.manifest.prepare
        backend.score(prepared(read_image(paths[0])))
        start = time.perf_counter()
        for path in paths:
            backend.score(prepared(read_image(path)))
        return len(paths) / (time.perf_counter() - start)
