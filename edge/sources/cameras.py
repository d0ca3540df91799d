"""Video sources: every input is one URI string, read one frame at a time.

Modelled on jetson-inference's videoSource. `open_source(uri)` understands:

    0, /dev/video0, v4l2:///dev/video0     a USB/V4L2 camera (index or device node)
    csi://0                                a Jetson CSI camera (GStreamer nvarguscamerasrc)
    rtsp://..., http(s)://...              a network stream (FFmpeg; RTSP over TCP)
    gst://<pipeline>                       any GStreamer pipeline, e.g. hardware RTSP decode
    file://clip.mp4, clip.mp4              a video file
    a folder, file://folder                its images in natural order (img2 before img10)
    part.png                               a single image

Live sources (cameras, streams, GStreamer pipelines) never end on their own: when the
camera drops they reconnect with exponential backoff, count each drop and say whether
they are connected now (`counters()`, published in the stats). Files and folders end cleanly.

csi:// and gst:// need an OpenCV built with GStreamer (JetPack's, or Debian's
python3-opencv); the pip wheel has FFmpeg only. This module imports nothing but numpy,
cv2 and the two edge modules below, so it also runs under the system Python with the
system OpenCV: that is how the GStreamer tests run it (tests/test_gstreamer.py).

Frames that cannot be decoded: an unreadable image in a folder is logged, counted in
`frames_corrupt` and skipped, so one bad file does not stop an inspection run. In a
video file FFmpeg already conceals or skips damaged packets; a failed read there
means the file has ended. From a live source a failed read is a drop: reconnect.
A source that cannot be opened at start is an error (SourceError), not a retry loop:
a wrong URI should fail loudly, and a service manager restarts us if the camera is late.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from edge.sources.gstreamer import csi_pipeline, opencv_has_gstreamer, pipeline_problem, with_appsink
from edge.method.preprocess import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger(__name__)

# Network streams: give up opening or reading after this long, so a dead camera
# turns into a reconnect instead of a read that blocks forever.
STREAM_TIMEOUT_MS = 10_000
# A camera that drops is tried again after 0.5 s, the wait doubling up to 5 s: a camera
# plugged back in or rebooted is inspected again within 5 s (each failed try logs at INFO).
RECONNECT_BACKOFF_S = (0.5, 5.0)


class SourceError(Exception):
    """A source that cannot be opened: missing camera, unreadable file, no such path."""


@dataclass
class Frame:
    index: int  # 0-based position in the source
    timestamp: float  # capture time, seconds since the epoch
    captured_at: float  # capture time on the monotonic clock, for latency
    image: np.ndarray  # BGR (or grey), as OpenCV decoded it


def _capture_now(index: int, image: np.ndarray) -> Frame:
    return Frame(index=index, timestamp=time.time(), captured_at=time.monotonic(), image=image)


class VideoSource(ABC):
    description: str  # for people: "camera 0", "video file clip.mp4"
    camera_id: str  # for topics: "cam0", "clip"
    is_live: bool

    def __init__(self) -> None:
        self.frames_corrupt = 0
        self.disconnects = 0
        self.reconnects = 0
        self.connected = True  # False while a live source waits to reconnect

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None when the source has ended or was closed."""

    @abstractmethod
    def close(self) -> None:
        """Stop reading. Safe to call from any thread (a signal handler included), twice."""

    def counters(self) -> dict[str, int | bool]:
        """The source's counters and whether it is connected now."""
        return {
            "frames_corrupt": self.frames_corrupt,
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
            "connected": self.connected,
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CaptureSource(VideoSource):
    """Anything cv2.VideoCapture opens: cameras, streams, video files.

    `open_capture` makes a new cv2.VideoCapture; a live source calls it again to
    reconnect, waiting `backoff` = (first, longest) seconds, doubling in between.
    """

    def __init__(
        self,
        description: str,
        open_capture: Callable[[], cv2.VideoCapture],
        *,
        live: bool,
        camera_id: str,
        backoff: tuple[float, float] = RECONNECT_BACKOFF_S,
    ):
        super().__init__()
        self.description = description
        self.camera_id = camera_id
        self.is_live = live
        self._open_capture = open_capture
        self._backoff = backoff
        self._closed = threading.Event()
        self._lock = threading.Lock()  # held while the capture is read or released
        self._next_index = 0
        capture = open_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {description}")
        self._capture: cv2.VideoCapture | None = capture

    def read(self) -> Frame | None:
        while not self._closed.is_set():
            with self._lock:
                if self._closed.is_set() or self._capture is None:
                    break
                ok, image = self._capture.read()
            if ok and image is not None and image.size:
                frame = _capture_now(self._next_index, image)
                self._next_index += 1
                return frame
            if not self.is_live:
                break
            self._reconnect()
        self._release()
        return None

    def _reconnect(self) -> None:
        self.disconnects += 1
        self.connected = False
        dropped_at = time.monotonic()
        log.warning("%s dropped; reconnecting", self.description)
        self._release()
        delay, longest = self._backoff
        while not self._closed.wait(delay):
            capture = self._open_capture()
            if capture.isOpened():
                with self._lock:
                    self._capture = capture
                self.reconnects += 1
                self.connected = True
                log.warning("%s reconnected after %.1f s", self.description, time.monotonic() - dropped_at)
                return
            capture.release()
            delay = min(delay * 2, longest)
            log.info(
                "%s unavailable for %.0f s; next try in %.1f s", self.description, time.monotonic() - dropped_at, delay
            )

    def _release(self, wait: bool = True) -> None:
        if not self._lock.acquire(blocking=wait):
            return
        try:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
        finally:
            self._lock.release()

    def close(self) -> None:
        self._closed.set()
        # Never wait here: a reader holding the lock releases the capture itself
        # once it sees the flag, and close() may run in a signal handler.
        self._release(wait=False)


class ImageFolderSource(VideoSource):
    """Image files read in order; a frame's index is its file's position in the list."""

    is_live = False

    def __init__(self, paths: list[Path], description: str, camera_id: str):
        super().__init__()
        self.description = description
        self.camera_id = camera_id
        self._paths = paths
        self._position = 0
        self._closed = False

    def read(self) -> Frame | None:
        while not self._closed and self._position < len(self._paths):
            index, path = self._position, self._paths[self._position]
            self._position += 1
            try:
                return _capture_now(index, read_image(path))
            except (ValueError, OSError) as exc:
                self.frames_corrupt += 1
                log.warning("skipping %s: %s", path, exc)
        return None

    def close(self) -> None:
        self._closed = True


def _slug(text: str) -> str:
    """A camera id safe for MQTT topics: lowercase letters, digits, '-' and '_'."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "cam"


CAMERA_HINT = "not connected, in use by another program, or no permission (is the user in group 'video'?)"


def _live(description: str, open_capture: Callable[[], cv2.VideoCapture], camera_id: str, hint: str) -> CaptureSource:
    """A camera or stream; if it does not open, the error ends with `hint`: what to check."""
    try:
        return CaptureSource(description, open_capture, live=True, camera_id=camera_id)
    except SourceError as exc:
        raise SourceError(f"{exc}: {hint}") from None


def _camera(index: int) -> CaptureSource:
    return _live(
        f"camera {index}", lambda: cv2.VideoCapture(index, cv2.CAP_V4L2), f"cam{index}", f"/dev/video{index} {CAMERA_HINT}"
    )


def _v4l2_device(device: str) -> CaptureSource:
    if not Path(device).exists():
        raise SourceError(f"{device}: no such camera device")
    number = re.search(r"(\d+)$", device)
    camera_id = f"cam{number.group(1)}" if number else _slug(Path(device).name)
    return _live(f"V4L2 camera {device}", lambda: cv2.VideoCapture(device, cv2.CAP_V4L2), camera_id, CAMERA_HINT)


def without_passwords(text: str) -> str:
    """`text` as messages show it: passwords in URLs (rtsp://user:***@cam) and rtspsrc's user-pw masked."""
    text = re.sub(r"(\w+://[^\s:/@]*):\S*@", r"\1:***@", text)
    return re.sub(r"(user-pw=)(\"[^\"]*\"|\S+)", r"\1***", text)


def _gstreamer(uri: str, description: str, pipeline: str, camera_id: str, hint: str) -> CaptureSource:
    if not opencv_has_gstreamer():
        raise SourceError(
            f"{without_passwords(uri)}: this OpenCV was built without GStreamer, which {uri.partition(':')[0]}:// needs; "
            "use JetPack's OpenCV or the system's python3-opencv instead of the pip wheel (docs/jetson.md)"
        )
    problem = pipeline_problem(pipeline)
    if problem:  # OpenCV would wait forever on a pipeline GStreamer built only in part
        raise SourceError(f"cannot open {description}: {without_passwords(problem)}; {hint}")
    # No timeout parameters: OpenCV 4.6 refuses to open a GStreamer pipeline given them, and
    # 4.7+ (JetPack's 4.8) already times out a stalled read after 30 s. rtspsrc gives up
    # connecting after its tcp-timeout (20 s).
    return _live(description, lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), camera_id, hint)


def _csi(uri: str, sensor: str) -> CaptureSource:
    if not sensor.isdigit():
        raise SourceError(f"{uri}: expected csi://<sensor number>, e.g. csi://0")
    return _gstreamer(
        uri,
        f"CSI camera {sensor}",
        csi_pipeline(int(sensor)),
        f"csi{sensor}",
        f"is the camera on {uri} connected, nvargus-daemon running, and NVIDIA's GStreamer plugins "
        "there (gst-inspect-1.0 nvarguscamerasrc)?",
    )


def _gst_camera_id(pipeline: str) -> str:
    """The host of the pipeline's stream (as rtsp:// would name it), else its first element."""
    url = re.search(r"location=\"?(\w+://[^\s\"!]+)", pipeline)
    host = urlparse(url.group(1)).hostname if url else None
    return _slug(host or pipeline.split()[0])


def _gst(uri: str, text: str) -> CaptureSource:
    if not text.strip().rstrip("!").strip():
        raise SourceError(f"{uri}: expected gst://<GStreamer pipeline>, e.g. gst://videotestsrc is-live=true")
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):  # C would cut the text at a NUL
        raise SourceError(f"{without_passwords(uri)!r}: control character in the pipeline")
    pipeline = with_appsink(text)
    return _gstreamer(
        uri,
        f"GStreamer pipeline '{without_passwords(' '.join(text.split()))}'",
        pipeline,
        _gst_camera_id(pipeline),
        "check it with gst-launch-1.0 (fakesink in place of appsink): a missing element or plugin, "
        "an unreachable camera, or caps that do not fit",
    )


def _stream(uri: str) -> CaptureSource:
    # OpenCV asks FFmpeg for RTSP over TCP unless OPENCV_FFMPEG_CAPTURE_OPTIONS says otherwise:
    # no lost packets (a smeared frame would look like a defect), and a drop shows at once.
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    parsed = urlparse(uri)
    return _live(
        f"stream {without_passwords(uri)}",
        lambda: cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params),
        _slug(parsed.hostname or "stream"),
        "unreachable, wrong path or credentials, or not a video stream",
    )


def _path(uri: str, path: Path) -> VideoSource:
    if path.is_dir():
        images = list_images(path)
        if not images:
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise SourceError(f"{uri}: folder has no images ({kinds})")
        return ImageFolderSource(images, f"folder {path} ({len(images)} images)", _slug(path.name))
    if not path.exists():
        raise SourceError(f"{uri}: no such file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource([path], f"image {path}", _slug(path.stem))
    if path.stat().st_size == 0:
        raise SourceError(f"{uri}: video file is empty")
    try:
        return CaptureSource(
            f"video file {path}",
            lambda: cv2.VideoCapture(str(path), cv2.CAP_FFMPEG),
            live=False,
            camera_id=_slug(path.stem),
        )
    except SourceError:
        raise SourceError(f"{uri}: cannot read video file (corrupt, or a format FFmpeg does not know)") from None


def quiet_opencv() -> None:
    """We report a source's failures ourselves, once, naming the URI: keep OpenCV and FFmpeg
    from printing their own lines ("[tcp @ 0x...] Connection refused", "[ WARN:0@0.4] ...")."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def open_source(uri: str) -> VideoSource:
    """The source a URI names; SourceError, naming the URI, when it cannot be opened."""
    uri = uri.strip()
    if uri.isdigit():
        return _camera(int(uri))
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme and not rest.strip():
        raise SourceError(f"{uri}: nothing after '{scheme}://'")
    if scheme == "v4l2":
        return _v4l2_device(rest)
    if scheme == "csi":
        return _csi(uri, rest)
    if scheme == "gst":
        return _gst(uri, rest)
    if scheme in ("rtsp", "rtsps", "http", "https"):
        return _stream(uri)
    if scheme == "file":
        return _path(uri, Path(rest))
    if scheme:
        raise SourceError(f"{uri}: unknown source type '{scheme}://' (use a camera number, v4l2://, csi://, rtsp://, http(s)://, gst://, file:// or a path)")
    if uri.startswith("/dev/video"):
        return _v4l2_device(uri)
    return _path(uri, Path(uri))
