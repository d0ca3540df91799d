"""The alert threshold, set from defect-free images the model never trained on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from edge.backends.base import Backend

SPREAD = 3.0  # standard deviations above the mean good score


def good_scores(backend: Backend, images: Sequence[np.ndarray]) -> np.ndarray:
    """The image score of each (3, H, W) network input, computed exactly as the edge box computes it."""
    scores = [backend.score(image).score for image in tqdm(images, desc="calibrating", unit="image", leave=False)]
    return np.asarray(scores, dtype=np.float64)


def calibrate_threshold(backend: Backend, images: Sequence[np.ndarray]) -> dict:
    """Threshold = max(mean + 3 * std, max) of the held-out good images' scores.

    `images` are the held-out images as the edge prepares them (trainer.data.load_images).

    A quality engineer pays for every false alarm on a good part, so the threshold sits
    in the far tail of the good scores: mean + 3 std (about 1 false alarm in 740 parts
    if good scores were normal) and never below the highest good score seen, so every
    held-out good image passes. The std is the sample std (ddof=1): with the 4 to 20
    images trainer.data holds out it is the less optimistic estimate. Defects whose
    score lands below the threshold are missed; `riad-trainer evaluate` measures that.

    Returns {"threshold", "good_mean", "good_std", "good_max", "count"}.
    """
    if len(images) < 2:
        raise ValueError(
            f"calibration needs at least 2 held-out defect-free images to measure their spread; got {len(images)}"
        )
    scores = good_scores(backend, images)
    mean, std, top = float(scores.mean()), float(scores.std(ddof=1)), float(scores.max())
    return {
        "threshold": max(mean + SPREAD * std, top),
        "good_mean": mean,
        "good_std": std,
        "good_max": top,
        "count": int(scores.size),
    }
