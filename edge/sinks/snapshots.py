"""Evidence on disk: for each defective frame, the frame itself and its heatmap overlay.

Files are named by event time, then frame index, so a folder listing reads as a
timeline: `20240501T101502.123Z_f000042_frame.jpg` and `..._overlay.jpg`.

A disk that is full or read-only must not stop the inspection (alerts still go
out over MQTT). The saver keeps trying on every defect, because space comes back
(log rotation, an operator cleaning up), but logs the failure once per outage
instead of once per frame, and counts every frame it could not save.

A box that runs for months must not fill its disk with evidence, so the folder has a
size limit (1 GiB unless told otherwise): past it, the oldest snapshots go first. Only
files with our own naming are counted or deleted, never anything else in the folder,
and snapshots left by an earlier run count too.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import deque
from pathlib import Path

import cv2

from edge.sinks.overlay import encode_jpeg
from edge.method.preprocess import to_rgb8
from edge.paths import make_folder
from edge.results import FrameResult

log = logging.getLogger(__name__)

DEFAULT_LIMIT_MB = 1024
SNAPSHOT_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)_f(\d+)_(frame|overlay)\.jpg$")


def event_time(timestamp: float) -> str:
    """UTC, to the millisecond, safe in file names on every OS."""
    seconds = time.strftime("%Y%m%dT%H%M%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}Z"


def _snapshots_in(folder: Path) -> list[tuple[list[Path], int]]:
    """Our snapshots in `folder`, oldest first: each defect's files and their total size."""
    by_defect: dict[tuple[str, int], list[Path]] = {}
    for path in folder.iterdir():
        match = SNAPSHOT_NAME.match(path.name)
        if match:
            by_defect.setdefault((match[1], int(match[2])), []).append(path)
    return [(paths, sum(p.stat().st_size for p in paths)) for _, paths in sorted(by_defect.items())]


class SnapshotSaver:
    """ResultSink writing JPEGs of defective frames into `save_dir` (created if missing).

    `limit_mb`: the folder's snapshots are kept under this size, oldest deleted first;
    0 keeps everything.
    """

    def __init__(self, save_dir: str | Path, limit_mb: float = DEFAULT_LIMIT_MB):
        if not limit_mb >= 0:  # NaN too
            raise ValueError(f"snapshot limit must be 0 (none) or a positive size in MB, not {limit_mb}")
        self.save_dir = Path(save_dir)
        make_folder(self.save_dir)
        # A folder we cannot write (read-only mount, another owner) is a setup error: say so at start,
        # not as "0 defective frames saved" at the end. A full disk instead is retried per defect.
        with tempfile.TemporaryFile(dir=self.save_dir):
            pass
        self.limit_bytes = int(limit_mb * 1024 * 1024)
        self.saved = 0  # defective frames written
        self.failed = 0  # defective frames that could not be written
        self.deleted = 0  # old defects whose snapshots were deleted to stay under the limit
        self._failing = False
        # Each defect's files with their total size, oldest first; deleted a defect at a time.
        self._kept: deque[tuple[list[Path], int]] = deque(_snapshots_in(self.save_dir))
        self._kept_bytes = sum(size for _, size in self._kept)
        self._trim(keep=0)  # the limit may have been lowered since the last run

    def handle(self, result: FrameResult) -> None:
        if not result.is_defect:
            return
        stem = f"{event_time(result.timestamp)}_f{result.frame_index:06d}"
        jpegs = {
            # JPEG holds 8-bit grey or BGR only; cameras also give 16-bit (shown in their own range) and BGRA frames.
            self.save_dir / f"{stem}_frame.jpg": encode_jpeg(cv2.cvtColor(to_rgb8(result.frame, white=None), cv2.COLOR_RGB2BGR)),
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
        size = sum(len(data) for data in jpegs.values())
        self._kept.append((list(jpegs), size))
        self._kept_bytes += size
        self._trim(keep=1)
        if self._failing:
            self._failing = False
            log.warning("saving snapshots in %s again (%d defects were not saved)", self.save_dir, self.failed)

    def _trim(self, keep: int) -> None:
        """Delete the oldest defects' files until the folder is under the limit; never the newest `keep`."""
        if not self.limit_bytes:
            return
        while self._kept_bytes > self.limit_bytes and len(self._kept) > keep:
            paths, size = self._kept[0]
            try:
                for path in paths:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("cannot delete old snapshot %s to stay under the limit: %s", path, exc)
                return
            self._kept.popleft()
            self._kept_bytes -= size
            if self.deleted == 0:
                log.warning("%s reached its %g MB limit; deleting the oldest snapshots from now on",
                            self.save_dir, self.limit_bytes / (1024 * 1024))
            self.deleted += 1

    def close(self) -> None:
        """Nothing stays open between frames."""
