"""The alert threshold at export, set from the held-out good images (the rule: edge/method/threshold.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from edge.backends.base import Backend
from edge.method.threshold import threshold_from_scores


def good_scores(backend: Backend, images: Sequence[np.ndarray]) -> np.ndarray:
    """The image score of each (3, H, W) network input, computed exactly as the edge box computes it."""
    scores = [backend.score(image).score for image in tqdm(images, desc="calibrating", unit="image", leave=False)]
    return np.asarray(scores, dtype=np.float64)


def calibrate_threshold(backend: Backend, images: Sequence[np.ndarray], false_alarm_rate: float | None = None) -> dict:
    """The threshold rule over `images`, the held-out images as the edge prepares them (trainer.data.load_images)."""
    return threshold_from_scores(good_scores(backend, images), false_alarm_rate)
