"""GStreamer pipelines for OpenCV: the Jetson CSI camera's, the user's own (gst://), and a
check of a pipeline with GStreamer's own parser before OpenCV opens it.

Why the check: OpenCV's GStreamer backend only asks whether GStreamer built *something*
from the text. When the first element is missing (nvarguscamerasrc where NVIDIA's plugins
are not installed, a typo), GStreamer builds the rest, a pipeline with no source, and
OpenCV then waits for its first frame: forever in 4.6 (Debian 12's, tested), 30 s in
4.7 and later (JetPack's 4.8), with no reason given either way. Parsing the text first,
with errors fatal, turns that into GStreamer's own one-line reason:
`no element "nvarguscamerasrc"`.

The parser is called through ctypes on the libgstreamer that OpenCV itself loads, so the
check needs no Python bindings (PyGObject) and works in a plain venv.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re

import cv2

# The end of every pipeline we open: BGR frames into OpenCV, only the newest kept, so a
# slow inspection never reads stale frames from a queue.
TO_APPSINK = "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"

_PARSE_FATAL_ERRORS = 1  # GST_PARSE_FLAG_FATAL_ERRORS: no half-built pipeline on an error


def opencv_has_gstreamer() -> bool:
    return re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()) is not None


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """GStreamer pipeline for a Jetson CSI camera, ending in BGR frames for OpenCV."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv ! video/x-raw, format=BGRx ! {TO_APPSINK}"
    )


def with_appsink(text: str) -> str:
    """A user's pipeline as OpenCV opens it: their own appsink kept, else ours appended."""
    text = text.strip().rstrip("!").strip()
    if re.search(r"(^|!)\s*appsink(\s|$)", text):
        return text
    return f"{text} ! {TO_APPSINK}"


class _GError(ctypes.Structure):
    _fields_ = [("domain", ctypes.c_uint32), ("code", ctypes.c_int), ("message", ctypes.c_char_p)]


@functools.cache
def _libgstreamer():
    """GStreamer's parse_launch and friends, or None where the library cannot be loaded."""
    gst_path, glib_path = ctypes.util.find_library("gstreamer-1.0"), ctypes.util.find_library("glib-2.0")
    if not gst_path or not glib_path:
        return None
    try:
        gst, glib = ctypes.CDLL(gst_path), ctypes.CDLL(glib_path)
    except OSError:
        return None
    error_out = ctypes.POINTER(ctypes.POINTER(_GError))
    gst.gst_init_check.argtypes = [ctypes.c_void_p, ctypes.c_void_p, error_out]
    gst.gst_init_check.restype = ctypes.c_int
    gst.gst_parse_launch_full.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, error_out]
    gst.gst_parse_launch_full.restype = ctypes.c_void_p
    gst.gst_object_unref.argtypes = [ctypes.c_void_p]
    glib.g_error_free.argtypes = [ctypes.POINTER(_GError)]
    return gst, glib


def pipeline_problem(pipeline: str) -> str | None:
    """Why GStreamer cannot build `pipeline` (a missing element or property, caps that
    cannot link, a syntax error), or None when it can, or when GStreamer is not loadable
    here (then OpenCV's own open decides)."""
    lib = _libgstreamer()
    if lib is None:
        return None
    gst, glib = lib
    error = ctypes.POINTER(_GError)()
    if not gst.gst_init_check(None, None, ctypes.byref(error)):
        problem = error.contents.message.decode(errors="replace") if error else "GStreamer cannot start"
        if error:
            glib.g_error_free(error)
        return problem
    element = gst.gst_parse_launch_full(pipeline.encode(), None, _PARSE_FATAL_ERRORS, ctypes.byref(error))
    problem = None
    if error:
        problem = error.contents.message.decode(errors="replace")
        glib.g_error_free(error)
    if element:
        gst.gst_object_unref(element)  # only parsed, never started: no camera was opened
    return problem
