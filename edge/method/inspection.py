"""One frame judged: region of interest -> prepare -> backend -> ignore mask -> threshold -> boxes.

The pipeline (free-running) and the triggered station both judge frames here, so a
verdict and a defect event can never disagree about the same frame. With an ROI the
result's map is in frame geometry (zero outside the ROI), so boxes and overlays are
in full-frame pixels; the score (edge.method.anomaly_map.image_score) is taken after
the ignore mask, over the crop's area. Only a defective frame has boxes: the regions
where the part of its map the score counts (the map, its rise above the highest good map,
or the map weighted by the good maps' spread: edge.method.anomaly_map.scored_part) is
above the threshold.
A good frame's map may cross the threshold at a pixel or two, since its score is the
mean of its highest pixels, not the single highest.
"""

from __future__ import annotations

import time

import numpy as np

from edge.backends.base import Backend
from edge.manifest import ManifestError
from edge.method.anomaly_map import image_score
from edge.method.regions import defect_boxes
from edge.results import FrameResult
from edge.method.roi import IgnoreMask, Roi
from edge.sources.cameras import Frame


class CorruptFrameError(ValueError):
    """A frame that cannot be prepared for the network (empty, an unsupported pixel format)."""


class FrameJudge:
    def __init__(self, backend: Backend, threshold: float | None = None, roi: Roi | None = None, ignore: IgnoreMask | None = None):
        """ManifestError when the model was trained on another ROI than `roi`."""
        self.backend = backend
        self.threshold = backend.manifest.threshold if threshold is None else threshold
        # Both changed at run time by MQTT commands (edge/sinks/commands.py); the pipeline
        # and a triggered camera judge no frame while `enabled` is False.
        self.enabled = True
        self.roi = roi
        self.ignore = ignore
        trained = backend.manifest.roi or None
        if trained != (roi.as_dict() if roi else None):
            def name(r: dict | None) -> str:
                return f"ROI {Roi.from_dict(r).spec()}" if r else "the whole frame"

            fix = (f"give the camera `roi: {Roi.from_dict(trained).spec()}` if its parts sit there, or train a model on its frames"
                   if roi is None else "train it with the same --roi")
            raise ManifestError(
                f"model {backend.manifest.model_id} was trained on {name(trained)}, but this camera looks at "
                f"{name(roi.as_dict() if roi else None)}; {fix}"
            )

    def in_frame(self, amap: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        """A map of the prepared view in frame geometry (with an ROI), its ignored regions 0."""
        if self.roi is not None:
            amap = self.roi.to_frame(amap, frame_shape)
        return amap if self.ignore is None else self.ignore.apply(amap, frame_shape)

    def judge(self, frame: Frame) -> FrameResult:
        """The frame's result; CorruptFrameError for a frame that cannot be prepared."""
        try:
            view = self.roi.view(frame.image) if self.roi else frame.image
            image = self.backend.manifest.prepare(view)
        except ValueError as exc:  # RoiError included: a frame smaller than the ROI
            raise CorruptFrameError(str(exc)) from None
        threshold = self.threshold  # once: a command may change it while this frame is judged
        scored = self.backend.score(image)
        m, shape = self.backend.manifest, frame.image.shape
        amap = self.in_frame(scored.anomaly_map, shape)
        # What the score counts of the map (Manifest.counted_part), placed and masked as the
        # map is: the boxes mark where it crosses the threshold, as the score compares it.
        part = m.counted_part(scored.anomaly_map)
        counted = amap if part is scored.anomaly_map else self.in_frame(part, shape)
        score = scored.score
        if self.ignore is not None or self.roi is not None:
            pixels = self.roi.pixels_in_frame_map(scored.anomaly_map.shape, shape) if self.roi else None
            score = image_score(counted, m.score_top_fraction, pixels)
        return FrameResult(
            frame_index=frame.index,
            timestamp=frame.timestamp,
            frame=frame.image,
            anomaly_map=amap,
            score=score,
            threshold=threshold,
            boxes=defect_boxes(counted, score, threshold, shape),
            latency_s=time.monotonic() - frame.captured_at,
            counted_map=None if counted is amap else counted,
        )
