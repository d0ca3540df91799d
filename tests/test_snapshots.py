"""Snapshot saving: real JPEGs of defective frames; a full disk is survived, not fatal."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time

import cv2
import numpy as np
import pytest
from media import bottle_frames

from edge.results import Box, FrameResult
from edge.snapshots import SnapshotSaver, event_time


def result(frame: np.ndarray, index: int, score: float, threshold: float = 0.5) -> FrameResult:
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 30:40] = score
    boxes = [Box(x=60, y=20, width=20, height=20, peak=score)] if score > threshold else []
    return FrameResult(index, time.time(), frame, amap, score, threshold, boxes)


def test_defective_frames_are_saved_as_frame_and_overlay(bottle_dir, tmp_path):
    good, broken = bottle_frames(bottle_dir, 2)
    saver = SnapshotSaver(tmp_path / "snaps" / "cam0")  # created, parents too
    saver.handle(result(good, 7, score=0.2))
    defect = result(broken, 42, score=0.9)
    saver.handle(defect)
    saver.close()

    files = sorted(p.name for p in (tmp_path / "snaps" / "cam0").iterdir())
    stem = f"{event_time(defect.timestamp)}_f000042"
    assert files == [f"{stem}_frame.jpg", f"{stem}_overlay.jpg"]
    frame = cv2.imread(str(tmp_path / "snaps" / "cam0" / files[0]))
    overlay = cv2.imread(str(tmp_path / "snaps" / "cam0" / files[1]))
    assert frame.shape == overlay.shape == (128, 128, 3)
    assert np.abs(frame.astype(int) - broken).mean() < 4  # the original, JPEG-compressed
    assert np.abs(overlay.astype(int) - broken).mean() > 10  # the heatmap drawn over it
    assert saver.saved == 1 and saver.failed == 0


def test_sixteen_bit_grey_frames_are_saved_too(tmp_path):
    frame = (np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) * 4)
    saver = SnapshotSaver(tmp_path)
    saver.handle(result(frame, 0, score=0.9))
    assert saver.saved == 1 and len(list(tmp_path.glob("*.jpg"))) == 2


def test_event_time_is_utc_to_the_millisecond():
    assert event_time(1714558502.1234) == "20240501T101502.123Z"


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 kB file system (tmpfs), so writes fail with ENOSPC as on a full SD card."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(folder) -> None:
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_disk_is_logged_once_counted_and_survived(bottle_dir, tiny_disk, caplog):
    (broken,) = bottle_frames(bottle_dir, 1)
    saver = SnapshotSaver(tiny_disk / "snaps")
    fill(tiny_disk)
    with caplog.at_level(logging.WARNING, logger="edge.snapshots"):
        for index in range(3):
            saver.handle(result(broken, index, score=0.9))
        assert saver.failed == 3 and saver.saved == 0
        assert list((tiny_disk / "snaps").iterdir()) == []  # no truncated JPEGs left behind
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "No space left" in errors[0].getMessage()

        (tiny_disk / "filler").unlink()  # an operator frees space: saving resumes by itself
        saver.handle(result(broken, 3, score=0.9))
    assert saver.saved == 1 and len(list((tiny_disk / "snaps").iterdir())) == 2
    assert "again (3 defects were not saved)" in caplog.text
