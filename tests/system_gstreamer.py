"""The system's GStreamer for tests: an OpenCV built with it, and a real RTSP camera.

The venv's OpenCV (the pip wheel) has no GStreamer and PyGObject is a system package, so
both run under the system Python (/usr/bin/python3, with Debian's python3-opencv and
numpy) in subprocesses: tests/read_source.py reads a source through edge.sources.cameras and
prints its frames, tests/rtsp_server.py serves a camera. scripts/setup.sh installs the
packages (as root, with apt); where they are missing, the tests skip and say what to install.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = (
    "python3-opencv python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
)
# What the tests' pipelines use: the camera encodes with x264enc, the readers decode with
# FFmpeg (the venv's OpenCV) or rtspsrc ... avdec_h264 (the system's).
ELEMENTS = "videotestsrc videoconvert appsink rtspsrc rtph264pay rtph264depay h264parse x264enc avdec_h264".split()

_PROBE = f"""
import re, cv2, gi
gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
assert re.search(r"GStreamer:\\s+YES", cv2.getBuildInformation()), "this cv2 has no GStreamer"
missing = [e for e in {ELEMENTS!r} if Gst.ElementFactory.find(e) is None]
assert not missing, "no GStreamer element " + ", ".join(missing)
"""


def _system_env() -> dict[str, str]:
    """The environment for the system Python: our repo importable, nothing of the venv's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    return env


@functools.cache
def system_gstreamer_missing() -> str | None:
    """Why the system Python cannot run the GStreamer tests, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON}"
    probe = subprocess.run([SYSTEM_PYTHON, "-s", "-c", _PROBE], capture_output=True, text=True, timeout=120, env=_system_env())
    if probe.returncode == 0:
        return None
    reason = (probe.stderr.strip().splitlines() or ["probe failed"])[-1]
    return f"{reason} (under {SYSTEM_PYTHON}; install: apt-get install {PACKAGES}, as scripts/setup.sh does as root)"


@pytest.fixture
def system_gstreamer() -> None:
    """Skips the test where the system Python lacks OpenCV with GStreamer or the plugins."""
    reason = system_gstreamer_missing()
    if reason:
        pytest.skip(reason)


class _Lines:
    """A subprocess's stdout lines, read by a thread so a test can wait with a deadline."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def next(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.process.args[2:]} within {timeout} s") from None

    def stop(self) -> str:
        """Kills the process (if still running) and returns its stderr."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        return self.process.stderr.read()


class RtspCamera:
    """tests/rtsp_server.py on `port`: start, SIGKILL (a camera losing power), start again."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/line"
        self.transports: list[str] = []  # the Transport header of every client's SETUP
        self._server: _Lines | None = None

    def start(self) -> None:
        process = subprocess.Popen(
            [SYSTEM_PYTHON, "-s", str(REPO / "tests" / "rtsp_server.py"), str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_system_env(),
        )  # fmt: skip
        self._server = _Lines(process)
        assert self._server.next(timeout=30) == "ready"
        threading.Thread(target=self._note_transports, args=(self._server,), daemon=True).start()

    def _note_transports(self, server: _Lines) -> None:
        while server.process.poll() is None:
            try:
                line = server.next(timeout=0.5)
            except AssertionError:
                continue
            if line.startswith("setup "):
                self.transports.append(line.removeprefix("setup "))

    def kill(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def rtsp_camera(system_gstreamer):
    from tests.broker import free_port

    camera = RtspCamera(free_port())
    camera.start()
    yield camera
    camera.kill()


class SourceReader:
    """tests/read_source.py under the system Python: the source's frames as dicts."""

    def __init__(self, uri: str, frames: int | None = None):
        args = [SYSTEM_PYTHON, "-s", str(REPO / "tests" / "read_source.py"), uri]
        if frames is not None:
            args.append(str(frames))
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_system_env())
        self._lines = _Lines(process)

    def next(self, timeout: float = 10.0) -> dict:
        return json.loads(self._lines.next(timeout))

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Waits for the reader to end; its exit code and stderr."""
        deadline = time.monotonic() + timeout
        while self._lines.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        code = self._lines.process.poll()
        return (code if code is not None else -9), self._lines.stop()

    def stop(self) -> str:
        return self._lines.stop()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


