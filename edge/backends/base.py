"""What every inference backend does: one prepared frame in, its anomaly map out.

A backend owns the whole per-frame method after preprocessing (the 12 masked
variants as one batch, the network, recombination, the anomaly map), because the
GPU backend keeps all of it on the device and returns only the map and score.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.manifest import Manifest
from edge.method.anomaly_map import image_score


@dataclass
class FrameScore:
    anomaly_map: np.ndarray  # (H, W) float32 at the model's input size
    score: float  # Backend.frame_score: the map's image score, as the manifest says


class Backend(ABC):
    name: str = "backend"

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    @abstractmethod
    def score(self, image: np.ndarray) -> FrameScore:
        """Score one (3, H, W) float32 RGB image in [0, 1] (see edge.method.preprocess.prepare)."""

    def frame_score(self, amap: np.ndarray) -> FrameScore:
        """A shown map (H, W) with its image score: of the part the score counts
        (Manifest.counted_part), summed up as the manifest says."""
        m = self.manifest
        return FrameScore(amap, image_score(m.counted_part(amap), m.score_top_fraction))

    def score_batch(self, images: Sequence[np.ndarray]) -> list[FrameScore]:
        """Score several frames; a backend that runs them as one network batch overrides this."""
        return [self.score(image) for image in images]

    def close(self) -> None:
        """Release device memory and sessions; the default has nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
