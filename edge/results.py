"""What the pipeline hands to its sinks (MQTT, snapshots, live view) for every frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Box:
    """An anomalous region in frame pixels, with the highest map value inside it."""

    x: int
    y: int
    width: int
    height: int
    peak: float


@dataclass
class FrameResult:
    frame_index: int  # 0-based position in the source
    timestamp: float  # capture time, seconds since the epoch
    frame: np.ndarray  # the original BGR frame
    anomaly_map: np.ndarray  # (S, S) float32 at the model's input size
    score: float
    threshold: float
    boxes: list[Box] = field(default_factory=list)
    latency_s: float = 0.0  # capture to decision

    @property
    def is_defect(self) -> bool:
        return self.score > self.threshold


class ResultSink(Protocol):
    """A consumer of frame results. `handle` must be quick: it runs on the pipeline thread."""

    def handle(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...
