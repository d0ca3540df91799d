"""Evidence on disk: for each defective frame, the frame itself and its heatmap overlay.

Files are named by event time, then frame index, so a folder listing reads as a
timeline: `20240501T101502.123Z_f000042_frame.jpg` and `..._overlay.jpg`.

A disk that is full or read-only must not stop the inspection (alerts still go
out over MQTT). The saver keeps trying on every defect, because space comes back
(log rotation, an operator cleaning up), but logs the failure once per outage
instead of once per frame, and counts every frame it could not save.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2

from edge.overlay import encode_jpeg
from edge.preprocess import to_rgb8
from edge.results import FrameResult

log = logging.getLogger(__name__)


def event_time(timestamp: float) -> str:
    """UTC, to the millisecond, safe in file names on every OS."""
    seconds = time.strftime("%Y%m%dT%H%M%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}Z"


class SnapshotSaver:
    """ResultSink writing JPEGs of defective frames into `save_dir` (created if missing)."""

    def __init__(self, save_dir: str | Path):
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.saved = 0  # defective frames written
        self.failed = 0  # defective frames that could not be written
        self._failing = False

    def handle(self, result: FrameResult) -> None:
        if not result.is_defect:
            return
        stem = f"{event_time(result.timestamp)}_f{result.frame_index:06d}"
        jpegs = {
            # JPEG holds 8-bit grey or BGR only; cameras also give 16-bit and BGRA frames.
            self.save_dir / f"{stem}_frame.jpg": encode_jpeg(cv2.cvtColor(to_rgb8(result.frame), cv2.COLOR_RGB2BGR)),
            self.save_dir / f"{stem}_overlay.jpg": result.overlay_jpeg(),
        }
        written: list[Path] = []
        try:
            for path, data in jpegs.items():
                written.append(path)
                path.write_bytes(data)
        except OSError as exc:
            for path in written:  # no half-written pair left behind
                path.unlink(missing_ok=True)
            self.failed += 1
            if not self._failing:
                self._failing = True
                log.error("cannot save snapshots in %s: %s; will retry on the next defect", self.save_dir, exc)
            return
        self.saved += 1
        if self._failing:
            self._failing = False
            log.warning("saving snapshots in %s again (%d defects were not saved)", self.save_dir, self.failed)

    def close(self) -> None:
        """Nothing stays open between frames."""
