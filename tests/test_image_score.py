"""The image score: the mean of the anomaly map's highest pixels, or the paper's maximum."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import encode_reference
from edge.method.anomaly_map import SCORE_TOP_FRACTION, image_score, score_weight, scored_part, usable_top_fraction
from edge.method.inspection import FrameJudge
from edge.method.regions import defect_boxes
from edge.method.preprocess import read_image
from edge.method.roi import Roi
from edge.sources.cameras import Frame


def test_the_score_averages_the_highest_share_of_pixels():
    amap = np.zeros((10, 20), np.float32)  # 200 pixels: 1 % is 2 of them
    amap[3, 4], amap[5, 6], amap[7, 8] = 0.9, 0.5, 0.3
    assert image_score(amap) == pytest.approx(0.9)  # None: the paper's maximum
    assert image_score(amap, 0.01) == pytest.approx((0.9 + 0.5) / 2)
    assert image_score(amap, 0.015) == pytest.approx((0.9 + 0.5 + 0.3) / 3)  # 3 pixels, rounded
    assert image_score(amap, 0.001) == pytest.approx(0.9)  # never fewer than one pixel
    assert image_score(amap, 1.0) == pytest.approx(amap.mean())
    # Of a larger area than the map's own (a map placed in a frame): more pixels averaged.
    assert image_score(amap, 0.01, pixels=300) == pytest.approx((0.9 + 0.5 + 0.3) / 3)
    assert image_score(amap, 1.0, pixels=10_000) == pytest.approx(amap.mean())  # at most the whole map


def test_one_hot_pixel_weighs_less_than_a_hot_region():
    """Why the score is not the maximum: a lone speck outscores a real blob under the paper's score."""
    speck, blob = np.zeros((100, 100), np.float32), np.zeros((100, 100), np.float32)
    speck[50, 50] = 0.4
    blob[40:50, 40:50] = 0.3
    assert image_score(speck) > image_score(blob)
    assert image_score(speck, SCORE_TOP_FRACTION) < image_score(blob, SCORE_TOP_FRACTION)


@pytest.mark.parametrize("value", [0, -0.01, 1.5, float("nan"), float("inf"), True, "0.01"])
def test_unusable_fractions(value):
    assert not usable_top_fraction(value)


def test_a_good_frame_has_no_boxes_where_a_pixel_crosses_the_threshold(bottle_dir, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model)
    assert backend.manifest.score_top_fraction == SCORE_TOP_FRACTION  # what export writes
    image = read_image(bottle_dir / "test" / "broken_large" / "000.png")
    frame = Frame(index=0, timestamp=time.time(), captured_at=time.monotonic(), image=image)
    scored = FrameJudge(backend, threshold=0.0).judge(frame)
    peak = float(scored.anomaly_map.max())
    assert scored.score < peak
    between = FrameJudge(backend, threshold=(scored.score + peak) / 2).judge(frame)
    assert not between.is_defect and between.boxes == []
    below = FrameJudge(backend, threshold=scored.score * 0.99).judge(frame)
    assert below.is_defect and below.boxes  # a defective frame always has a region


@pytest.mark.parametrize(
    ("side", "frame_shape", "x", "y"),
    [(900, (1400, 2000, 3), 700, 300),  # a crop larger than the map: the map is placed at about its own size
     (40, (300, 400, 3), 200, 100)],  # smaller: the map is shrunk to the crop's pixels, fewer of them to average
)
@pytest.mark.parametrize("score_reference", ["mean", "max", "spread"])
def test_a_crop_scores_the_same_placed_in_a_larger_frame(bottle_dir, tiny_onnx_model, side, frame_shape, x, y, score_reference):
    """With an ROI the score is taken on the map in frame geometry, over the crop's area only;
    with a score reference or weight, on the part of it the score counts, placed the same way."""
    import cv2

    backend = OnnxCpuBackend(tiny_onnx_model)
    if score_reference == "max":  # a margin rising across the map: the score counts less on the right
        ramp = np.tile(np.linspace(0, 0.05, 64, dtype=np.float32), (64, 1))
        backend.manifest = replace(backend.manifest, score_reference_map=encode_reference(ramp))
    if score_reference == "spread":  # a weight falling across the map: the same
        ramp = np.tile(np.linspace(1.0, 0.2, 64, dtype=np.float32), (64, 1))
        backend.manifest = replace(backend.manifest, score_weight_map=encode_reference(ramp))
    part = cv2.resize(read_image(bottle_dir / "test" / "broken_large" / "000.png"), (side, side))
    frame = np.zeros(frame_shape, np.uint8)  # the part a small share of the view
    frame[y : y + side, x : x + side] = part
    roi = Roi(x, y, side, side)
    alone = FrameJudge(backend, threshold=0.0).judge(Frame(0, time.time(), time.monotonic(), part))
    backend.manifest.roi = roi.as_dict()  # as if trained on this ROI
    placed = FrameJudge(backend, threshold=0.0, roi=roi).judge(Frame(0, time.time(), time.monotonic(), frame))
    assert placed.anomaly_map.size > 3 * alone.anomaly_map.size  # mostly zeros around the crop
    assert placed.score == pytest.approx(alone.score, rel=0.02)  # which are not averaged in
    if score_reference != "mean":
        assert alone.score < image_score(alone.anomaly_map, SCORE_TOP_FRACTION) - 0.01  # the margin or weight counts


@pytest.mark.parametrize("score_reference", ["max", "spread"])
def test_boxes_and_warm_colours_follow_what_the_score_counts(bottle_dir, tiny_onnx_model, score_reference):
    """With a score reference or weight the map shown is higher than what the score counts:
    a region where the good parts' maps vary a lot (a large margin, a small weight) is shown
    but neither boxed nor warm; the same rise where they do not vary is both."""
    from edge.sinks.overlay import heatmap_overlay

    backend = OnnxCpuBackend(tiny_onnx_model)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True  # the left half: where good parts' maps vary a lot
    if score_reference == "max":
        backend.manifest = replace(backend.manifest, score_reference_map=encode_reference(np.where(left, 0.2, 0).astype(np.float32)))
    else:
        backend.manifest = replace(backend.manifest, score_weight_map=encode_reference(np.where(left, 0.2, 1).astype(np.float32)))
    margin, weight = backend.manifest.score_margin, backend.manifest.score_weight  # as stored and decoded
    shown = np.zeros((64, 64), np.float32)
    shown[10:20, 8:18] = 0.15  # where they vary: nothing counted above the margin, a fifth with the weight
    shown[40:50, 40:50] = 0.15  # where they do not: all of it counted
    counted = scored_part(shown, margin, weight)
    assert counted[15, 12] < 0.05 and counted[45, 45] == pytest.approx(0.15)
    threshold = 0.05
    score = image_score(counted, SCORE_TOP_FRACTION)
    assert score > threshold
    boxes = defect_boxes(counted, score, threshold, (64, 64))
    assert [(b.x, b.y, b.width, b.height) for b in boxes] == [(40, 40, 10, 10)]
    frame = np.full((64, 64, 3), 128, np.uint8)
    blue, red = heatmap_overlay(frame, shown, threshold, boxes, counted)[[15, 45], [12, 45]].astype(int).T[[0, 2]]
    assert blue[0] > red[0]  # the left region is drawn cool: counted below the threshold
    assert red[1] > blue[1]  # the right one warm


def test_the_score_weight_counts_still_pixels_whole_and_varying_ones_less():
    """score_weight turns the good maps' per-pixel spread into the share of the map the
    score counts: all of it where good maps never vary, half where they vary as much as the
    map's typical pixel, little where they vary a lot; never above 1 or down to 0."""
    spread = np.full((32, 32), 0.01, np.float32)
    spread[:8] = 0.0  # a still background
    spread[24:] = 0.1  # a highlight that moves from part to part
    typical = float(spread.mean())
    weight = score_weight(spread)
    assert weight.dtype == np.float32 and weight.shape == spread.shape
    assert weight[0, 0] == 1.0
    assert weight[12, 0] == pytest.approx(typical / (0.01 + typical))
    assert weight[30, 0] == pytest.approx(typical / (0.1 + typical))
    assert weight[30, 0] < 0.3
    assert 0 < weight.min() and weight.max() <= 1
    assert score_weight(np.full((8, 8), 0.02, np.float32)) == pytest.approx(0.5)  # even texture: a constant factor,
    assert score_weight(np.zeros((8, 8), np.float32)) == pytest.approx(1.0)  # so the ranking is the mean's; none: all
    # A rise where the part varies counts less than the same rise where it is still.
    amap = np.zeros((32, 32), np.float32)
    amap[2:6, 2:6] = amap[26:30, 2:6] = 0.2
    counted = scored_part(amap, None, weight)
    assert counted[4, 4] == pytest.approx(0.2) and counted[28, 4] < 0.06
