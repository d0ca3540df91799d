"""The live view: a small web page by the line showing what the inspector sees.

    /              the page (edge/sinks/web/)
    /stream.mjpg   MJPEG of the latest frame with its heatmap overlay
    /events        server-sent events: `state` once, then `frame` per frame, `defect` per defect
    /api/state     JSON: recent scores, the threshold, the last defects
    /defects/<id>.jpg  a defect's thumbnail

The pipeline thread only records results (a few list appends under a lock); JPEGs are
encoded by the server threads when a client asks, at most once per frame, so neither a
slow client nor an idle page costs the pipeline anything.

A defect is what edge.results.DefectTracker groups (consecutive defective frames, as a
bottle stays in view for several): its entry keeps the worst frame and counts the
frames it spans, and carries the `defect_id` the MQTT events have.

With a password (`--view-password`, or RIAD_VIEW_PASSWORD), every path asks for HTTP
Basic authentication; any user name goes, the password is what counts. Basic
authentication over plain HTTP keeps casual visitors out, not someone who can read the
network's traffic: put the view behind a TLS proxy where that matters.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources

import cv2

from edge.http_serving import BackgroundHTTPServer, bind, serve_in_background
from edge.sinks.overlay import encode_jpeg, heatmap_overlay
from edge.results import FrameResult

DEFECTS_KEPT = 12
EVENTS_KEPT = 512  # server-sent events a client may fall behind by before it skips some
STREAM_INTERVAL_S = 0.1  # MJPEG at most ~10 frames per second per client
KEEPALIVE_S = 15.0
THUMBNAIL_WIDTH = 240
WEB_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
             "/app.js": ("app.js", "text/javascript; charset=utf-8"),
             "/style.css": ("style.css", "text/css; charset=utf-8")}


class LiveViewError(Exception):
    """The live view cannot start (port in use, address not available)."""


@dataclass
class _Defect:
    id: int
    defect_id: str | None
    first_index: int
    first_time: float
    last_index: int
    frames: int
    worst: FrameResult
    thumbnail: bytes | None = None

    def as_dict(self) -> dict:
        w = self.worst
        return {
            "id": self.id,
            "defect_id": self.defect_id,
            "time": self.first_time,
            "frame_index": self.first_index,
            "last_frame_index": self.last_index,
            "frames": self.frames,
            "score": w.score,
            "threshold": w.threshold,
            "worst_frame_index": w.frame_index,
            "boxes": [b.as_dict() for b in w.boxes],
            "frame_size": [int(w.frame.shape[1]), int(w.frame.shape[0])],
            # The query changes when a worse frame replaces the thumbnail, so browsers refetch it.
            "thumbnail": f"/defects/{self.id}.jpg?frame={w.frame_index}",
        }


class _LiveState:
    """Everything the page shows, shared between the pipeline thread and the server threads."""

    def __init__(self, history: int):
        self.changed = threading.Condition()
        self.closed = False
        self.latest: FrameResult | None = None
        self.last_frame: dict | None = None  # the latest `frame` event
        self.frames_seen = 0
        self.scores: deque[tuple[int, float, float]] = deque(maxlen=history)
        self.threshold: float | None = None
        self.defects: deque[_Defect] = deque(maxlen=DEFECTS_KEPT)
        self.defects_seen = 0
        self.open_defect: _Defect | None = None
        self.events: deque[tuple[int, str, str]] = deque(maxlen=EVENTS_KEPT)
        self.event_seq = 0

    def add(self, result: FrameResult) -> None:
        with self.changed:
            self.latest = result
            self.frames_seen += 1
            self.threshold = result.threshold
            self.scores.append((result.frame_index, result.timestamp, result.score))
            self.last_frame = {
                "index": result.frame_index,
                "time": result.timestamp,
                "score": result.score,
                "threshold": result.threshold,
                "is_defect": result.is_defect,
                "latency_ms": round(result.latency_s * 1000, 1),
            }
            self._emit("frame", self.last_frame)
            if result.is_defect:
                self._defect_frame(result)
            self.changed.notify_all()

    def _defect_frame(self, result: FrameResult) -> None:
        d = self.open_defect
        if d is None or result.defect_id != d.defect_id:
            self.defects_seen += 1
            d = self.open_defect = _Defect(self.defects_seen, result.defect_id, result.frame_index,
                                           result.timestamp, result.frame_index, 0, result)
            self.defects.append(d)
        d.frames = result.defect_frame
        d.last_index = result.frame_index
        if result.score >= d.worst.score:
            d.worst, d.thumbnail = result, None
        self._emit("defect", d.as_dict())

    def _emit(self, name: str, data: dict) -> None:
        self.event_seq += 1
        self.events.append((self.event_seq, name, json.dumps(data)))

    def snapshot(self) -> dict:
        with self.changed:
            return self._snapshot()

    def _snapshot(self) -> dict:
        scores = list(self.scores)
        span = scores[-1][1] - scores[0][1] if len(scores) > 1 else 0.0
        return {
            "frames": self.frames_seen,
            "defects": self.defects_seen,
            "threshold": self.threshold,
            "history": self.scores.maxlen,
            "fps": round((len(scores) - 1) / span, 2) if span > 0 else None,
            "last_frame": self.last_frame,
            "scores": [{"index": i, "time": t, "score": s} for i, t, s in scores],
            "last_defects": [d.as_dict() for d in reversed(self.defects)],
        }

    def events_after(self, seq: int, timeout: float) -> tuple[int, list[tuple[str, str]]]:
        """Events newer than `seq`, waiting up to `timeout` for one; returns the new last seq."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or self.event_seq > seq, timeout)
            fresh = [(name, data) for s, name, data in self.events if s > seq]
            return self.event_seq, fresh

    def snapshot_and_seq(self) -> tuple[dict, int]:
        with self.changed:
            return self._snapshot(), self.event_seq

    def wait_frame(self, seen: int, timeout: float) -> int:
        """Wait for a frame newer than the `seen`-th; returns the current frame count."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or self.frames_seen > seen, timeout)
            return self.frames_seen

    def frame_jpeg(self) -> bytes | None:
        """The latest frame with its overlay, encoded once however many clients watch."""
        with self.changed:
            result = self.latest
        return None if result is None else result.overlay_jpeg()

    def thumbnail(self, defect_id: int) -> bytes | None:
        with self.changed:
            found = [d for d in self.defects if d.id == defect_id]
            if not found:
                return None
            defect, worst, cached = found[0], found[0].worst, found[0].thumbnail
        if cached is not None:
            return cached
        overlay = heatmap_overlay(worst.frame, worst.anomaly_map, worst.threshold, worst.boxes, worst.counted_map)
        h, w = overlay.shape[:2]
        if w > THUMBNAIL_WIDTH:
            size = (THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w)))
            overlay = cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
        jpeg = encode_jpeg(overlay, quality=80)
        with self.changed:
            if defect.worst is worst:  # a worse frame may have arrived meanwhile
                defect.thumbnail = jpeg
        return jpeg

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: _LiveServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        try:
            if not self._authorised():
                self._ask_for_password()
            elif path in WEB_FILES:
                name, content_type = WEB_FILES[path]
                self._send(resources.files("edge.sinks").joinpath("web", name).read_bytes(), content_type)
            elif path == "/api/state":
                self._send(json.dumps(state.snapshot()).encode(), "application/json")
            elif path == "/stream.mjpg":
                self._stream(state)
            elif path == "/events":
                self._events(state)
            elif path.startswith("/defects/") and path.endswith(".jpg"):
                number = path[len("/defects/"):-len(".jpg")]
                jpeg = state.thumbnail(int(number)) if number.isdigit() else None
                if jpeg is None:
                    self.send_error(HTTPStatus.NOT_FOUND, "no such defect (only the last few are kept)")
                else:
                    self._send(jpeg, "image/jpeg")
            else:
                self.send_error(HTTPStatus.NOT_FOUND)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away; nothing to clean up

    def _authorised(self) -> bool:
        password = self.server.password
        if password is None:
            return True
        scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _user, _, given = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), password.encode())

    def _ask_for_password(self) -> None:
        body = b"the live view needs its password\n"
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", 'Basic realm="riad-edge live view", charset="UTF-8"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self, content_type: str) -> None:
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()

    def _stream(self, state: _LiveState) -> None:
        self._start_stream("multipart/x-mixed-replace; boundary=frame")
        # Browsers show a part only once the next part's headers arrive, so each JPEG is
        # followed at once by the next boundary and headers: a stopped line still shows
        # its last frame. Parts end at the boundary; they carry no Content-Length.
        part_start = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n"
        self.wfile.write(part_start)
        seen = 0
        while not state.closed:
            count = state.wait_frame(seen, KEEPALIVE_S)
            if count == seen:
                continue
            seen = count
            jpeg = state.frame_jpeg()
            if jpeg is None:  # closed meanwhile
                continue
            self.wfile.write(jpeg + b"\r\n" + part_start)
            self.wfile.flush()
            time.sleep(STREAM_INTERVAL_S)

    def _events(self, state: _LiveState) -> None:
        self._start_stream("text/event-stream")
        snapshot, seq = state.snapshot_and_seq()
        self.wfile.write(b"retry: 2000\nevent: state\ndata: " + json.dumps(snapshot).encode() + b"\n\n")
        self.wfile.flush()
        while not state.closed:
            seq, fresh = state.events_after(seq, KEEPALIVE_S)
            # A comment line keeps idle connections open and finds clients that left.
            chunk = "".join(f"event: {name}\ndata: {data}\n\n" for name, data in fresh) or ": keep-alive\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()

    def log_message(self, format: str, *args) -> None:
        pass  # a page polled by operators all day is not worth a log line per request


class _LiveServer(BackgroundHTTPServer):
    def __init__(self, address: tuple[str, int], state: _LiveState, password: str | None):
        self.state, self.password = state, password
        super().__init__(address, _Handler)


class LiveView:
    """A ResultSink serving the live view over HTTP on a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, history: int = 300,
                 password: str | None = None):
        if password == "":
            raise LiveViewError("the live view password is empty; give one, or none for an open view")
        self._state = _LiveState(history)
        self._server = bind(lambda: _LiveServer((host, port), self._state, password), f"the live view on {host}:{port}", "port", LiveViewError)
        self.host, self.port = host, self._server.server_address[1]
        self._thread = serve_in_background(self._server, "liveview")

    @property
    def url(self) -> str:
        # 0.0.0.0 is where we listen, not where a browser should go.
        host = socket.gethostname() if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/"

    def handle(self, result: FrameResult) -> None:
        self._state.add(result)

    def close(self) -> None:
        self._state.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
