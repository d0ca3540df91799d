"""Heatmap overlays a person can look at: the frame, its anomaly map in colour, the boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # edge.results imports this module to make its overlays
    from edge.results import Box


def heatmap_overlay(
    frame: np.ndarray,
    amap: np.ndarray,
    threshold: float,
    boxes: Sequence[Box] = (),
    counted: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """BGR image the frame's size: the map blended over the frame, regions boxed in red.

    Colours are scaled so that the threshold sits at the middle of the colour map:
    anything drawn warm is above it, whatever the model's score range. `counted`: the
    part of the map the score counts (edge.method.anomaly_map.scored_part), where it is
    less than the map: each pixel is then scaled by the threshold plus what the score
    leaves out there, so warm is where the score counts the map above the threshold,
    and the rest of a defect's extent shows in the cooler colours below it.
    """
    from edge.method.preprocess import to_rgb8

    bgr = cv2.cvtColor(to_rgb8(frame, white=None), cv2.COLOR_RGB2BGR)  # a 16-bit frame shown in its own range
    h, w = bgr.shape[:2]
    if threshold <= 0:
        level = np.clip(amap, 0.0, 1.0)
    elif counted is None:
        level = np.clip(amap * (0.5 / threshold), 0.0, 1.0)
    else:  # where the score counts nothing, amap - counted is amap: below the middle whatever amap is
        level = np.clip(0.5 * amap / (threshold + (amap - counted)), 0.0, 1.0)
    colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.resize(colour, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(bgr, 1.0 - alpha, colour, alpha, 0.0)
    thickness = max(1, round(min(h, w) / 200))
    for b in boxes:
        cv2.rectangle(out, (b.x, b.y), (b.x + b.width - 1, b.y + b.height - 1), (0, 0, 255), thickness)
    return out


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
