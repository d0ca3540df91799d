"""Snapshot saving: real JPEGs of defective frames; a full disk is survived, not fatal."""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import pytest
from media import bottle_frames

from edge.results import Box, FrameResult
from edge.sinks.snapshots import SnapshotSaver, event_time
from tests.conftest import fill


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


def test_a_full_disk_is_logged_once_counted_and_survived(bottle_dir, tiny_disk, caplog):
    (broken,) = bottle_frames(bottle_dir, 1)
    saver = SnapshotSaver(tiny_disk / "snaps")
    fill(tiny_disk)
    with caplog.at_level(logging.WARNING, logger="edge.sinks.snapshots"):
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


def snapshot_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".jpg"))


def test_the_folder_stays_under_its_limit_oldest_deleted_first(bottle_dir, tmp_path, caplog):
    frames = bottle_frames(bottle_dir, 2)
    folder = tmp_path / "snaps"
    folder.mkdir()
    (folder / "notes.txt").write_text("the operator's own file")
    (folder / "reference.jpg").write_bytes(b"not ours either")
    one_pair = None
    with caplog.at_level(logging.WARNING, logger="edge.sinks.snapshots"):
        saver = SnapshotSaver(folder, limit_mb=0.2)
        start = time.time()
        for index in range(40):
            r = result(frames[index % 2], index, score=0.9)
            r.timestamp = start + index  # one defect a second
            saver.handle(r)
            if one_pair is None:
                one_pair = sum(p.stat().st_size for p in folder.glob("*_f*.jpg"))
    ours = [p for p in folder.glob("*_f*.jpg")]
    assert sum(p.stat().st_size for p in ours) <= 0.2 * 1024 * 1024
    assert sum(p.stat().st_size for p in ours) > 0.2 * 1024 * 1024 - 2 * one_pair  # not emptied either
    # Whole pairs survive, and they are the newest ones.
    indices = sorted({int(p.name.split("_f")[1][:6]) for p in ours})
    assert indices == list(range(40 - len(indices), 40))
    assert len(ours) == 2 * len(indices) and saver.saved == 40
    assert saver.deleted == 40 - len(indices)
    assert (folder / "notes.txt").exists() and (folder / "reference.jpg").exists()
    assert caplog.text.count("reached its 0.2 MB limit") == 1


def test_snapshots_of_an_earlier_run_count_towards_the_limit(bottle_dir, tmp_path):
    frames = bottle_frames(bottle_dir, 1)
    first = SnapshotSaver(tmp_path, limit_mb=0)  # no limit
    for index in range(20):
        r = result(frames[0], index, score=0.9)
        r.timestamp = 1714558502.0 + index
        first.handle(r)
    assert first.deleted == 0 and len(snapshot_files(tmp_path)) == 40
    # Restarted with a limit: the oldest of the earlier run go at once.
    pair = sum(p.stat().st_size for p in tmp_path.glob("*_f000019_*.jpg"))
    second = SnapshotSaver(tmp_path, limit_mb=3.5 * pair / (1024 * 1024))
    assert snapshot_files(tmp_path)[0].endswith("_f000017_frame.jpg")  # whole pairs go
    assert len(snapshot_files(tmp_path)) == 6 and second.deleted == 17


@pytest.mark.parametrize("limit", [-1, float("nan")])
def test_a_negative_limit_is_refused(tmp_path, limit):
    with pytest.raises(ValueError, match="0 \\(none\\) or a positive size"):
        SnapshotSaver(tmp_path, limit_mb=limit)
