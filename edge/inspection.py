"""One frame judged: (region of interest) -> prepare -> backend -> threshold -> boxes.

The pipeline (free-running) and the triggered station both judge frames here, so a
verdict and a defect event can never disagree about the same frame.
"""

from __future__ import annotations

import time

from edge.backends.base import Backend
from edge.preprocess import prepare
from edge.regions import defect_boxes
from edge.results import FrameResult
from edge.sources import Frame


class CorruptFrameError(ValueError):
    """A frame that cannot be prepared for the network (empty, an unsupported pixel format)."""


class FrameJudge:
    def __init__(self, backend: Backend, threshold: float | None = None):
        self.backend = backend
        self.threshold = backend.manifest.threshold if threshold is None else threshold

    def judge(self, frame: Frame) -> FrameResult:
        """The frame's result; CorruptFrameError for a frame that cannot be prepared."""
        try:
            image = prepare(frame.image, self.backend.manifest.input_size)
        except ValueError as exc:
            raise CorruptFrameError(str(exc)) from None
        scored = self.backend.score(image)
        return FrameResult(
            frame_index=frame.index,
            timestamp=frame.timestamp,
            frame=frame.image,
            anomaly_map=scored.anomaly_map,
            score=scored.score,
            threshold=self.threshold,
            boxes=defect_boxes(scored.anomaly_map, self.threshold, frame.image.shape),
            latency_s=time.monotonic() - frame.captured_at,
        )
