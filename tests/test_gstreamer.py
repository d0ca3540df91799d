"""GStreamer sources (gst://, csi://) and RTSP reconnection, against the real thing.

GStreamer pipelines run in Debian's OpenCV under the system Python (tests/system_gstreamer.py);
the RTSP camera is GStreamer's RTSP server streaming H.264, killed and restarted mid-run.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from system_gstreamer import RtspCamera, SourceReader, rtsp_camera, system_gstreamer, wait_until  # noqa: F401

from edge.sources.cameras import open_source
from edge.monitoring.stats import PipelineStats

# A live test camera: solid blue (foreground-color is ARGB), 64 x 48.
BLUE = "videotestsrc is-live=true pattern=solid-color foreground-color=0xff0000ff ! video/x-raw, width=64, height=48, framerate=30/1"


@pytest.mark.parametrize(
    "pipeline",
    [BLUE, f"{BLUE} ! videoconvert ! video/x-raw, format=BGR ! appsink max-buffers=1"],
    ids=["our appsink appended", "the user's own appsink"],
)
def test_gst_pipeline_is_a_live_camera_giving_bgr_frames(system_gstreamer, pipeline):
    reader = SourceReader(f"gst://{pipeline}", frames=5)
    opened = reader.next(timeout=30)
    frames = [reader.next() for _ in range(5)]
    code, errors = reader.finish()
    assert code == 0, errors
    assert opened["live"] and opened["camera_id"] == "videotestsrc"
    assert [f["index"] for f in frames] == list(range(5))
    assert all(f["shape"] == [48, 64, 3] for f in frames)
    for frame in frames:  # blue in BGR order, as the rest of the pipeline expects
        blue, green, red = frame["mean_bgr"]
        assert blue > 250 and green < 5 and red < 5, frame["mean_bgr"]


@pytest.mark.parametrize(
    "uri, reason",
    [
        # Without NVIDIA's plugins OpenCV would wait forever on what GStreamer could build.
        ("csi://0", 'no element "nvarguscamerasrc"'),
        ("gst://nosuchcamerasrc ! videoconvert", 'no element "nosuchcamerasrc"'),
        ("gst://videotestsrc patern=ball", 'no property "patern" in element "videotestsrc"'),
        ("gst://videotestsrc ! video/x-raw, format=NOPE", "could not link"),
        ("gst://rtspsrc location=rtsp://admin:hunter2@127.0.0.1:9/line ! rtph264depay ! h264parse ! avdec_h264", "cannot open"),
    ],
)
def test_gstreamer_source_that_cannot_work_fails_fast_saying_why(system_gstreamer, uri, reason):
    started = time.monotonic()
    code, errors = SourceReader(uri).finish()
    assert code == 3, errors
    assert reason in errors and "SourceError" in errors
    assert "hunter2" not in errors and time.monotonic() - started < 15


def test_rtsp_camera_restart_is_a_counted_visible_gap_and_frames_resume(rtsp_camera, caplog):
    """rtsp:// through the venv's OpenCV (FFmpeg): the camera loses power, comes back."""
    source = open_source(rtsp_camera.url)
    stats = PipelineStats(source_counters=source.counters)  # what the MQTT stats topic publishes
    frames = []

    def read() -> None:
        while (frame := source.read()) is not None:
            frames.append(frame)

    reader = threading.Thread(target=read)
    with caplog.at_level(logging.INFO, logger="edge.sources.cameras"):
        reader.start()
        try:
            wait_until(lambda: len(frames) >= 5, 15, "first frames")
            assert stats.snapshot()["source_connected"] is True

            rtsp_camera.kill()
            wait_until(lambda: not stats.snapshot()["source_connected"], 10, "the drop is noticed")
            seen_when_down = len(frames)
            time.sleep(1.0)
            assert len(frames) == seen_when_down  # nothing while the camera is away

            rtsp_camera.start()
            wait_until(lambda: len(frames) > seen_when_down + 5, 15, "frames after the restart")
            after = stats.snapshot()
        finally:
            source.close()
            reader.join(timeout=10)
    assert after["source_connected"] is True and after["disconnects"] == 1 and after["reconnects"] == 1
    assert [f.index for f in frames] == list(range(len(frames)))  # numbering goes on across the gap
    assert "dropped; reconnecting" in caplog.text and "reconnected after" in caplog.text
    # OpenCV asks FFmpeg for RTSP over TCP (no smeared frames from lost UDP packets).
    assert len(rtsp_camera.transports) == 2 and all("TCP" in t for t in rtsp_camera.transports)


def test_gstreamer_rtsp_pipeline_reconnects_when_the_camera_comes_back(rtsp_camera):
    """The pipeline shape of hardware decoding on a Jetson (avdec_h264 for nvv4l2decoder)."""
    pipeline = f"rtspsrc location={rtsp_camera.url} latency=0 protocols=tcp ! rtph264depay ! h264parse ! avdec_h264"
    reader = SourceReader(f"gst://{pipeline}")
    try:
        opened = reader.next(timeout=30)
        before = [reader.next() for _ in range(5)]
        rtsp_camera.kill()
        time.sleep(1.0)
        rtsp_camera.start()
        after = reader.next(timeout=20)
        while after["counters"]["disconnects"] == 0:  # frames already on their way when it died
            after = reader.next()
    finally:
        errors = reader.stop()
    assert opened["camera_id"] == "127-0-0-1"  # as rtsp://127.0.0.1/... would name it
    assert [f["shape"] for f in before] == [[120, 160, 3]] * 5 and after["shape"] == [120, 160, 3]
    assert after["counters"] == {"frames_corrupt": 0, "disconnects": 1, "reconnects": 1, "connected": True}
    assert after["index"] > before[-1]["index"]
    assert "dropped; reconnecting" in errors and "reconnected after" in errors
