"""What the pipeline hands to its sinks (MQTT, snapshots, live view) for every frame."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge.sinks.overlay import encode_jpeg, heatmap_overlay


@dataclass(frozen=True)
class Box:
    """An anomalous region in frame pixels, with the highest map value inside it."""

    x: int
    y: int
    width: int
    height: int
    peak: float

    def as_dict(self) -> dict:
        """The box as the MQTT events and the live view publish it."""
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height, "peak": float(self.peak)}


@dataclass
class FrameResult:
    frame_index: int  # 0-based position in the source
    timestamp: float  # capture time, seconds since the epoch
    frame: np.ndarray  # the original BGR frame
    anomaly_map: np.ndarray  # float32, covering the whole frame: (H, W) at the model's input size, or frame-shaped at lower resolution with an ROI
    score: float
    threshold: float
    boxes: list[Box] = field(default_factory=list)
    latency_s: float = 0.0  # capture to decision
    # The part of anomaly_map the score counts (edge.method.anomaly_map.scored_part), in the
    # same geometry; None where that is all of it (models whose score counts the map shown).
    counted_map: np.ndarray | None = None
    # Consecutive defective frames are one defect (a part stays in view for several
    # frames); DefectTracker fills these in. Good frames keep None and 0.
    defect_id: str | None = None  # shared by the frames of one defect
    defect_frame: int = 0  # 1 for a defect's first frame, 2 for its second...
    _overlay_jpeg: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _overlay_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def is_defect(self) -> bool:
        return self.score > self.threshold

    def overlay_jpeg(self) -> bytes:
        """The heatmap overlay as JPEG, made once however many sinks (and threads) ask for it."""
        with self._overlay_lock:
            if self._overlay_jpeg is None:
                self._overlay_jpeg = encode_jpeg(heatmap_overlay(self.frame, self.anomaly_map, self.threshold, self.boxes,
                                                                 self.counted_map))
            return self._overlay_jpeg


class DefectTracker:
    """Groups consecutive defective frames into one defect, for every sink alike.

    A line controller wants one reject per part, not one per frame the part was seen in;
    `defect_frame == 1` marks the first. One good frame in between starts a new defect,
    and so does `end()` (no frame came for a while, or inspection was paused).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # assign on the pipeline thread, end on the lifecycle's timer
        self._id: str | None = None
        self._frames = 0

    def assign(self, result: FrameResult) -> None:
        with self._lock:
            if not result.is_defect:
                self._id, self._frames = None, 0
                return
            if self._id is None:
                self._id = str(uuid.uuid4())
            self._frames += 1
            result.defect_id, result.defect_frame = self._id, self._frames

    def end(self, defect_id: str | None = None) -> None:
        """The next defective frame starts a new defect (unless `defect_id`, when given, has already ended)."""
        with self._lock:
            if defect_id is None or self._id == defect_id:
                self._id, self._frames = None, 0


class ResultSink(Protocol):
    """A consumer of frame results. `handle` must be quick: it runs on the pipeline thread."""

    def handle(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...
