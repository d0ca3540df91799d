"""A defect's whole life on MQTT, as Frigate's `frigate/events`: `new`, `update`, `end`.

The per-frame `defect` events say "this frame is defective"; a dashboard, a counter or
Home Assistant wants "a defect is in view now, this is its worst frame, now it is gone".
DefectLifecycle wraps a camera's MqttPublisher and adds, through the same spool and in
order with the events:

    <prefix>/<camera>/events          JSON, QoS 1, not retained: new / update / end
    <prefix>/<camera>/defect/active   ON / OFF, retained: a defect is open
    <prefix>/<camera>/overlay         JPEG, retained: the worst frame of the latest defect

A defect is what DefectTracker groups (consecutive defective frames, one `defect_id`).
`update` is sent only when a frame is worse (higher score) than the worst so far, so a
part in view for 100 frames gives a handful of messages, not 100. It ends at the first
good frame; when no frame comes for `idle_timeout_s` (the camera stalled or is
reconnecting); when inspection is paused; when the inspector stops; or, for a triggered
camera, once the part's verdict is sent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.sinks.mqtt import SCHEMA_VERSION, MqttPublisher, frame_fields, iso_utc
from edge.results import DefectTracker, FrameResult

log = logging.getLogger(__name__)

DEFECT_IDLE_TIMEOUT_S = 5.0  # no frame for this long ends an open defect (a camera reconnecting takes seconds)
EVENTS, ACTIVE, OVERLAY = "events", "defect/active", "overlay"  # below <prefix>/<camera>/

# Why a defect ended, the message's `end_reason`.
GOOD_FRAME, TIMEOUT, PAUSED, STOPPED, VERDICT = "good_frame", "timeout", "paused", "stopped", "verdict"
NEW_DEFECT = "new_defect"  # another defect began before this one's end was seen (not expected)


@dataclass
class _OpenDefect:
    defect_id: str
    start: float  # capture time of its first frame (epoch seconds)
    last: float  # capture time of its latest frame
    last_seen: float  # monotonic, when its latest frame was handled: for the idle timeout
    frames: int
    worst: FrameResult
    worst_event_id: str


class DefectLifecycle:
    """A ResultSink in place of the camera's MqttPublisher: publishes each frame through it,
    then the defect's lifecycle. Closing it ends an open defect (`stopped`) and closes the publisher.

    `tracker` is the grouping that assigned the frames' defect ids; ending a defect on a
    timeout or a pause tells it, so the next defective frame starts a new defect.
    `detecting` says whether inspection is on (`detect/set`): while it is off, no defect
    opens, not even from a frame that was being judged as the pause came.
    """

    def __init__(
        self,
        publisher: MqttPublisher,
        tracker: DefectTracker | None = None,
        idle_timeout_s: float = DEFECT_IDLE_TIMEOUT_S,
        detecting: Callable[[], bool] = lambda: True,
    ):
        self.publisher = publisher
        self.tracker = tracker
        self.idle_timeout_s = idle_timeout_s
        self.detecting = detecting
        self._lock = threading.Lock()  # the pipeline thread, the idle timer and commands (pause) all end defects
        self._open: _OpenDefect | None = None
        self._ended: str | None = None  # the defect ended last: its late frames (judged as it ended) are not a new one
        self._closed = threading.Event()
        # Nothing is open at start, whatever a previous run (killed with a defect open) left retained.
        publisher.send(ACTIVE, b"OFF", "defect/active OFF", retain=True)
        self._timer = threading.Thread(target=self._watch_idle, name=f"lifecycle-{publisher.camera_id[:64]}", daemon=True)
        self._timer.start()

    @property
    def open_defect_id(self) -> str | None:
        with self._lock:
            return self._open.defect_id if self._open else None

    def handle(self, result: FrameResult) -> None:
        event_id = self.publisher.handle(result)
        with self._lock:
            if self._closed.is_set():
                return
            current = self._open
            if not result.is_defect:
                if current is not None:
                    self._end(GOOD_FRAME, result.timestamp)
                return
            if event_id is None or result.defect_id is None or result.defect_id == self._ended:
                return
            if not self.detecting():
                if current is not None:
                    self._end(PAUSED, current.last)
                return
            if current is not None and current.defect_id != result.defect_id:
                log.warning("defect %s had no end before defect %s began; ending it", current.defect_id, result.defect_id)
                self._end(NEW_DEFECT, current.last)
                current = None
            if current is None:
                self._open = _OpenDefect(result.defect_id, result.timestamp, result.timestamp, time.monotonic(), 1, result, event_id)
                self._publish_worst("new")
                self.publisher.send(ACTIVE, b"ON", "defect/active ON", retain=True)
                return
            current.frames += 1
            current.last, current.last_seen = result.timestamp, time.monotonic()
            if result.score > current.worst.score:
                current.worst, current.worst_event_id = result, event_id
                self._publish_worst("update")

    def end(self, reason: str) -> None:
        """Ends the open defect now (inspection paused, a triggered part's verdict decided)."""
        with self._lock:
            if self._open is not None and not self._closed.is_set():
                self._end(reason, self._open.last)

    def close(self) -> None:
        with self._lock:
            if self._open is not None and not self._closed.is_set():
                self._end(STOPPED, self._open.last)
            self._closed.set()
        self._timer.join()
        self.publisher.close()

    # --- under the lock -----------------------------------------------------------------

    def _publish_worst(self, kind: str) -> None:
        """`new` or `update`: the overlay first, so whoever reacts to the message finds the image current."""
        assert self._open is not None
        self.publisher.send_image(OVERLAY, self._open.worst.overlay_jpeg(), f"overlay of defect {self._open.defect_id}", retain=True)
        self.publisher.send(EVENTS, self._message(kind), f"{kind} of defect {self._open.defect_id}")

    def _end(self, reason: str, end_time: float) -> None:
        assert self._open is not None
        if self.tracker is not None:
            self.tracker.end(self._open.defect_id)
        self.publisher.send(EVENTS, self._message("end", reason, end_time), f"end of defect {self._open.defect_id}")
        self.publisher.send(ACTIVE, b"OFF", "defect/active OFF", retain=True)
        self._ended, self._open = self._open.defect_id, None

    def _message(self, kind: str, end_reason: str | None = None, end_time: float | None = None) -> bytes:
        assert self._open is not None
        d = self._open
        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "type": kind,
                "defect_id": d.defect_id,
                "camera_id": self.publisher.camera_id,
                "model_id": self.publisher.model_id,
                "start_time": iso_utc(d.start),
                "start_epoch": d.start,
                "end_time": None if end_time is None else iso_utc(end_time),
                "end_epoch": end_time,
                "end_reason": end_reason,
                "frames": d.frames,
                "worst": {"event_id": d.worst_event_id, **frame_fields(d.worst, self.publisher.overlay_topic(d.worst_event_id))},
            }
        ).encode()

    # --- the idle timer -----------------------------------------------------------------

    def _watch_idle(self) -> None:
        """Ends a defect no frame has followed for `idle_timeout_s`: the pipeline waits on the camera meanwhile."""
        while not self._closed.wait(min(1.0, self.idle_timeout_s / 4)):
            with self._lock:
                current = self._open
                if current is None or self._closed.is_set():
                    continue
                if not self.detecting():
                    self._end(PAUSED, current.last)
                elif time.monotonic() - current.last_seen >= self.idle_timeout_s:
                    self._end(TIMEOUT, current.last)
