"""Video sources on real encoded videos and image folders."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path

import cv2
import pytest
from media import (
    bottle_frames,
    nearest,
    write_image_folder,
    write_truncated_png,
    write_video,
)

from edge.sources.gstreamer import opencv_has_gstreamer
from edge.sources.cameras import CaptureSource, SourceError, open_source


def read_all(source) -> list:
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    return frames


@pytest.mark.parametrize("fourcc, suffix", [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_video_file_gives_every_frame_in_order_then_ends(bottle_dir, tmp_path, fourcc, suffix):
    originals = bottle_frames(bottle_dir, 8)
    path = write_video(tmp_path / f"line{suffix}", originals, fourcc)
    for uri in (str(path), f"file://{path}"):
        with open_source(uri) as source:
            assert not source.is_live
            assert source.camera_id == "line"
            frames = read_all(source)
            assert source.read() is None  # ended stays ended
        assert [f.index for f in frames] == list(range(8))
        assert [nearest(f.image, originals) for f in frames] == list(range(8))
        assert all(f.image.shape == (128, 128, 3) for f in frames)
        assert frames[0].timestamp <= frames[-1].timestamp


def test_folder_reads_images_in_natural_order_and_ignores_other_files(bottle_dir, tmp_path):
    originals = bottle_frames(bottle_dir, 4)
    names = ["img10.png", "img2.jpg", "IMG1.PNG", "img3.bmp"]
    folder = write_image_folder(tmp_path / "parts", originals, names)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder named like an image is not one

    with open_source(str(folder)) as source:
        assert source.camera_id == "parts" and "4 images" in source.description
        frames = read_all(source)
    # IMG1, img2, img3, img10 -> originals 2, 1, 3, 0
    assert [nearest(f.image, originals) for f in frames] == [2, 1, 3, 0]
    assert [f.index for f in frames] == [0, 1, 2, 3]


def test_corrupt_image_in_folder_is_skipped_counted_and_logged(bottle_dir, tmp_path, caplog):
    originals = bottle_frames(bottle_dir, 4)
    folder = write_image_folder(tmp_path / "parts", originals, ["a1.png", "a2.png", "a4.png", "a5.png"])
    write_truncated_png(folder / "a3.png", originals[0])

    with caplog.at_level(logging.WARNING, logger="edge.sources.cameras"), open_source(str(folder)) as source:
        frames = read_all(source)
        assert source.frames_corrupt == 1
        assert source.counters()["frames_corrupt"] == 1
    assert [nearest(f.image, originals) for f in frames] == [0, 1, 2, 3]
    assert [f.index for f in frames] == [0, 1, 3, 4]  # the index is the file's place in the folder
    assert "a3.png" in caplog.text


def test_single_image_is_a_one_frame_source(bottle_dir, tmp_path):
    (image,) = bottle_frames(bottle_dir, 1)
    folder = write_image_folder(tmp_path, [image], ["part.jpg"])
    with open_source(str(folder / "part.jpg")) as source:
        assert len(read_all(source)) == 1


def written(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "make_uri, message",
    [
        (lambda d: str(d / "missing.mp4"), "no such file or folder"),
        (lambda d: f"file://{d}/missing", "no such file or folder"),
        (lambda d: written(d / "zero.mp4", b""), "video file is empty"),
        (lambda d: written(d / "text.mp4", b"not a video " * 100), "cannot read video file"),
        (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no images"),
        (lambda d: "97", "cannot open camera 97"),
        (lambda d: "/dev/video97", "no such camera device"),
        (lambda d: "v4l2:///dev/video97", "no such camera device"),
        (lambda d: "csi://front", "csi://<sensor number>"),
        (lambda d: "csi://", "nothing after 'csi://'"),
        (lambda d: "gst://", "nothing after 'gst://'"),
        (lambda d: "gst:// ! ", "expected gst://<GStreamer pipeline>"),
        (lambda d: "gst://videotestsrc\x00 ! fakesink", "control character"),
        (lambda d: "rtsp://127.0.0.1:9/line", "cannot open stream rtsp://127.0.0.1:9/line"),
        (lambda d: "http://127.0.0.1:9/cam.mjpg", "cannot open stream"),
        (lambda d: "ftp://host/clip.mp4", "unknown source type"),
    ],
)
def test_unavailable_sources_fail_fast_with_a_clear_message(tmp_path, make_uri, message):
    uri = make_uri(tmp_path)
    started = time.monotonic()
    with pytest.raises(SourceError, match=message):
        open_source(uri)
    assert time.monotonic() - started < 5.0


def test_stream_errors_never_show_the_password():
    with pytest.raises(SourceError) as info:
        open_source("rtsp://admin:hunter2@127.0.0.1:9/line")
    assert "hunter2" not in str(info.value) and "admin" in str(info.value)


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("uri", ["csi://0", "gst://videotestsrc is-live=true"])
def test_gstreamer_source_without_gstreamer_says_so(uri):
    with pytest.raises(SourceError, match="without GStreamer.*JetPack's OpenCV"):
        open_source(uri)


class RecordingOpener:
    """Opens a real video file, as a camera driver would, and notes when it was asked to."""

    def __init__(self, path: Path):
        self.path = path
        self.calls: list[float] = []

    def __call__(self) -> cv2.VideoCapture:
        self.calls.append(time.monotonic())
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)


def test_live_source_reconnects_with_growing_backoff_when_the_camera_comes_back(bottle_dir, tmp_path):
    clip = write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 3), "MJPG")
    opener = RecordingOpener(clip)
    source = CaptureSource("test camera", opener, live=True, camera_id="cam", backoff=(0.02, 0.08))
    assert [source.read().index for _ in range(3)] == [0, 1, 2]

    # The "camera" is unplugged when its stream ends and plugged back in 0.4 s later.
    unplugged = clip.rename(tmp_path / "away.avi")
    threading.Timer(0.4, unplugged.rename, args=[clip]).start()
    frame = source.read()
    source.close()

    assert frame is not None and frame.index == 3  # numbering goes on across the drop
    assert source.counters() == {"frames_corrupt": 0, "disconnects": 1, "reconnects": 1, "connected": True}
    gaps = [b - a for a, b in itertools.pairwise(opener.calls[1:])]
    assert opener.calls[-1] - opener.calls[1] >= 0.35  # it kept trying until the camera was back...
    assert min(gaps) >= 0.015 and max(gaps) < 0.3  # ...waiting backoff-sized gaps...
    assert gaps[0] < 0.06 and len(gaps) <= 12  # ...that grew from 0.02 s toward the 0.08 s cap


def test_close_interrupts_a_live_source_waiting_to_reconnect(bottle_dir, tmp_path):
    clip = write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 2), "MJPG")
    source = CaptureSource("test camera", RecordingOpener(clip), live=True, camera_id="cam", backoff=(10.0, 30.0))
    clip.unlink()  # already open: both frames still come, then the camera is gone for good
    results = []
    reader = threading.Thread(target=lambda: results.extend([source.read(), source.read(), source.read()]))
    reader.start()
    time.sleep(0.3)
    started = time.monotonic()
    source.close()
    reader.join(timeout=2.0)
    assert not reader.is_alive() and time.monotonic() - started < 1.0
    assert [f.index for f in results[:2]] == [0, 1] and results[2] is None
    assert source.disconnects == 1 and source.reconnects == 0


@pytest.fixture
def http_server(tmp_path):
    """A plain HTTP server over tmp_path, as an IP camera's recording endpoint would be."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_stream_is_live_and_reconnects_when_it_ends(bottle_dir, tmp_path, http_server):
    originals = bottle_frames(bottle_dir, 4)
    write_video(tmp_path / "cam.avi", originals, "MJPG")
    with open_source(f"{http_server}/cam.avi") as source:
        assert source.is_live and source.camera_id == "127-0-0-1"
        frames = [source.read() for _ in range(6)]  # the stream "drops" after 4 frames
        assert source.disconnects == 1 and source.reconnects == 1
    assert [f.index for f in frames] == list(range(6))
    assert [nearest(f.image, originals) for f in frames] == [0, 1, 2, 3, 0, 1]
