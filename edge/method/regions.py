"""Anomalous regions: where the map exceeds the threshold, as boxes in frame pixels."""

from __future__ import annotations

import cv2
import numpy as np

from edge.results import Box


def defect_boxes(amap: np.ndarray, score: float, threshold: float, frame_shape: tuple[int, ...]) -> list[Box]:
    """A defective frame's connected regions of `amap > threshold`, scaled from map to
    frame coordinates; none for a good frame.

    A frame is defective when its score exceeds the threshold. The score is the map's
    maximum or the mean of its highest pixels, never above the maximum, so a defective
    frame always has at least one box. A good frame's map may still cross the threshold
    at a pixel or two when its score is a mean; those are no defect's regions.
    """
    if not score > threshold:
        return []
    above = (amap > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    sy, sx = frame_shape[0] / amap.shape[0], frame_shape[1] / amap.shape[1]
    boxes = []
    for label in range(1, count):
        x, y, w, h, _area = stats[label]
        peak = float(amap[labels == label].max())
        boxes.append(
            Box(
                x=int(x * sx),
                y=int(y * sy),
                width=max(1, round(w * sx)),
                height=max(1, round(h * sy)),
                peak=peak,
            )
        )
    return sorted(boxes, key=lambda b: -b.peak)
