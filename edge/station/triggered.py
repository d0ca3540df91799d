"""A triggered camera: each trigger -> the next frame(s) -> one verdict, never silence.

A live camera is read all the time in its own thread and only its newest frame is
kept, so a trigger waits at most one frame interval for a frame taken after it. A
file or folder (a recorded line) is read on demand: each trigger takes its next
frame(s), so a replay gives the same part to the same trigger every time.

A trigger that cannot be served gets an `error` verdict saying why: the camera is
down or ended, too many triggers are waiting, the deadline passed, the payload was
malformed, or the station stopped first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import numpy as np

from edge.method.inspection import CorruptFrameError, FrameJudge
from edge.results import DefectTracker, FrameResult, ResultSink
from edge.sources.cameras import Frame, VideoSource
from edge.station.trigger import Trigger
from edge.station.verdict import ERROR, Verdict
from edge.monitoring.stats import PipelineStats

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 2.0
DEFAULT_QUEUE_SIZE = 8  # triggers waiting for the camera; more get `error`, not a growing backlog
RECENT_PARTS = 1000  # part ids remembered to recognise a trigger the broker delivers twice


class NoFrameError(Exception):
    """No frame after the trigger: the camera is down or the recorded source has ended."""


class FrameGrabber:
    def __init__(self, source: VideoSource, stats: PipelineStats | None = None):
        """`stats` learns of every frame the source delivers (the camera's health)."""
        self.source = source
        self._stats = stats
        self._latest: Frame | None = None
        self._ended: str | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        if source.is_live:
            self._thread = threading.Thread(target=self._keep_latest, name=f"grab-{source.camera_id}", daemon=True)
            self._thread.start()

    def _keep_latest(self) -> None:
        reason = "the camera stream ended"
        try:
            while (frame := self.source.read()) is not None:
                if self._stats is not None:
                    self._stats.record_capture()
                with self._changed:
                    self._latest = frame
                    self._changed.notify_all()
        except Exception as exc:  # noqa: BLE001 - every later trigger gets it as its error
            reason = f"the camera failed: {exc}"
        with self._changed:
            self._ended = reason
            self._changed.notify_all()

    def next_after(self, after: float, timeout: float) -> Frame:
        """The first frame captured after `after` (monotonic); NoFrameError when none comes in time."""
        if self._thread is None:
            frame = self.source.read()
            if frame is None:
                raise NoFrameError(f"{self.source.description} has no more frames")
            if self._stats is not None:
                self._stats.record_capture()
            return frame
        with self._changed:
            fresh = self._changed.wait_for(
                lambda: self._ended is not None or (self._latest is not None and self._latest.captured_at > after),
                timeout=max(0.0, timeout),
            )
            if self._latest is not None and self._latest.captured_at > after:
                return self._latest
            if fresh:
                raise NoFrameError(self._ended or "no frame")
            raise NoFrameError(f"no frame from {self.source.description} within {timeout * 1000:.0f} ms (camera down or reconnecting?)")

    def close(self) -> None:
        self.source.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class VerdictStats:
    """Verdicts by kind and trigger-to-verdict latency, for the stats topic and the summary."""

    def __init__(self, window: int = 500):
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=window)

    def record(self, verdict: Verdict) -> None:
        with self._lock:
            self._counts[verdict.verdict] += 1
            if verdict.verdict != ERROR:
                self._latencies.append(verdict.latency_s)

    def snapshot(self) -> dict:
        with self._lock:
            latencies = np.asarray(self._latencies, dtype=np.float64) * 1000.0
            p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (0.0, 0.0)
            return {
                "ok": self._counts["OK"],
                "nok": self._counts["NOK"],
                "error": self._counts[ERROR],
                "latency_p50_ms": round(float(p50), 1),
                "latency_p99_ms": round(float(p99), 1),
            }


class TriggeredCamera:
    def __init__(
        self,
        camera_id: str,
        source: VideoSource | None,
        judge: FrameJudge,
        publish: Callable[[Verdict], None],
        sinks: Sequence[ResultSink] = (),
        deadline_s: float = DEFAULT_DEADLINE_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        down_reason: str | None = None,
    ):
        """`source` None with `down_reason`: a camera that could not be opened still answers, with errors."""
        self.camera_id = camera_id
        self.judge = judge
        self.sinks = list(sinks)
        self.deadline_s = deadline_s
        self.down_reason = down_reason
        self._publish = publish
        self._triggers: queue.Queue[Trigger] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self.stats = VerdictStats()
        self.triggers_received = 0
        self._recent_parts: deque[str | None] = deque(maxlen=RECENT_PARTS)
        self.part_done: Callable[[], None] | None = None  # after each part's verdict (the station ends its defect's lifecycle)
        self.frame_stats = PipelineStats(
            source_counters=source.counters if source is not None else None, queue_depth=self._triggers.qsize, detecting=lambda: judge.enabled
        )
        self.source = source
        self._grabber = FrameGrabber(source, self.frame_stats) if source is not None else None

    def submit(self, trigger: Trigger) -> None:
        """Queue a trigger; answers at once with `error` when it cannot be served. Never blocks."""
        self.triggers_received += 1
        if trigger.redelivered and trigger.part_id in self._recent_parts:
            # QoS 1 is at least once: after a broker restart it may resend a trigger we
            # already have. Inspecting it again would take the next part's frame.
            log.info("camera %s: trigger for part %s delivered again by the broker; already answered", self.camera_id, trigger.part_id)
            return
        self._recent_parts.append(trigger.part_id)
        if trigger.problem:
            self._error(trigger, trigger.problem)
        elif self._stop.is_set():
            self._error(trigger, "the station is stopping")
        elif self._grabber is None:
            self._error(trigger, f"camera down: {self.down_reason}")
        else:
            try:
                self._triggers.put_nowait(trigger)
            except queue.Full:
                self._error(trigger, f"queue full: {self._triggers.maxsize} triggers already wait for this camera")

    def run(self) -> None:
        """Serves triggers until `stop()`; those still queued then get `error`."""
        while not self._stop.is_set():
            try:
                trigger = self._triggers.get(timeout=0.1)
            except queue.Empty:
                continue
            self._serve(trigger)
            if self.part_done is not None:
                self.part_done()
        while True:
            try:
                self._error(self._triggers.get_nowait(), "the station stopped before inspecting it")
            except queue.Empty:
                break

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._grabber is not None:
            self._grabber.close()

    def _serve(self, trigger: Trigger) -> None:
        assert self._grabber is not None and trigger.part_id is not None
        deadline = trigger.received_at + (trigger.deadline_s or self.deadline_s)
        if time.monotonic() > deadline:
            self._error(trigger, f"deadline passed: waited {self._age_ms(trigger):.0f} ms for the camera")
            return
        if not self.judge.enabled:  # a PLC must not take an unjudged part for a good one
            self._error(trigger, "detection is OFF (paused by a detect/set command)")
            return
        results: list[FrameResult] = []
        tracker = DefectTracker()  # one part, one defect_id
        after = trigger.received_at
        for _ in range(trigger.frames):
            try:
                frame = self._grabber.next_after(after, deadline - time.monotonic())
                after = frame.captured_at
                result = self.judge.judge(frame)
            except NoFrameError as exc:
                self._error(trigger, str(exc))
                return
            except CorruptFrameError as exc:
                self._error(trigger, f"corrupt frame: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - a failing backend answers the part, then the next trigger tries again
                log.exception("camera %s: inspecting part %s failed", self.camera_id, trigger.part_id)
                self._error(trigger, f"inspection failed: {exc}")
                return
            tracker.assign(result)
            self.frame_stats.record_frame(result.latency_s, result.is_defect)
            self._hand_to_sinks(result)
            results.append(result)
        verdict = Verdict.from_results(trigger.part_id, results, time.monotonic() - trigger.received_at, trigger.received_epoch)
        if time.monotonic() > deadline:
            # The gate has gone by: the PLC must treat the part as unjudged; the score stays for the record.
            verdict.error = f"deadline passed: the verdict ({verdict.verdict}) came after {verdict.latency_s * 1000:.0f} ms"
            verdict.verdict = ERROR
        self._finish(verdict)

    def _hand_to_sinks(self, result: FrameResult) -> None:
        for sink in self.sinks:
            try:
                sink.handle(result)
            except Exception:
                log.exception("%s failed on frame %d", type(sink).__name__, result.frame_index)

    def _age_ms(self, trigger: Trigger) -> float:
        return (time.monotonic() - trigger.received_at) * 1000.0

    def _error(self, trigger: Trigger, reason: str) -> None:
        self._finish(Verdict(trigger.part_id, ERROR, time.monotonic() - trigger.received_at, trigger.received_epoch, error=reason))

    def _finish(self, verdict: Verdict) -> None:
        self.stats.record(verdict)
        try:
            self._publish(verdict)
        except Exception:
            log.exception("camera %s: verdict for part %s not published", self.camera_id, verdict.part_id)
