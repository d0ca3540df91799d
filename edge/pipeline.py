"""The inspection loop: source -> capture thread -> queue -> prepare -> backend -> decision -> sinks.

Capture runs ahead of inference in its own thread, so decoding the next frame
overlaps scoring this one. The queue between them is short on purpose:

- a live source (camera, stream) must never fall behind the line, so when the
  queue is full the OLDEST waiting frame is dropped (and counted);
- a file or folder is a record to be inspected completely, so capture waits instead.

`stop()` (SIGINT/SIGTERM) stops capture, lets the frames already queued finish,
and closes the sinks, so the MQTT sink can say `offline` before the process ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

from edge.backends.base import Backend
from edge.method.inspection import CorruptFrameError, FrameJudge
from edge.results import DefectTracker, ResultSink
from edge.sources.cameras import Frame, VideoSource
from edge.monitoring.stats import PipelineStats

log = logging.getLogger(__name__)

QUEUE_SIZE = 4  # frames captured ahead of inference
_END = object()  # capture thread's last item: the source has ended or was stopped
_SINK_ERROR_LOG_EVERY = 100  # a sink failing on every frame logs once per this many


class Pipeline:
    def __init__(
        self,
        source: VideoSource,
        backend: Backend,
        sinks: Sequence[ResultSink] = (),
        threshold: float | None = None,
        max_frames: int | None = None,
        judge: FrameJudge | None = None,
    ):
        """The pipeline closes the source and the sinks when it ends; the backend stays the caller's.

        `judge` (a camera's ROI and ignore mask) replaces the default one of `backend` and `threshold`.
        """
        self.source = source
        self.backend = backend
        self.sinks = list(sinks)
        self.judge = judge or FrameJudge(backend, threshold)
        self.threshold = self.judge.threshold
        self.max_frames = max_frames
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self._capture_error: BaseException | None = None
        self._sink_errors: dict[int, int] = {}  # id(sink) -> failures
        self.stats = PipelineStats(source_counters=source.counters, queue_depth=self._queue.qsize, detecting=lambda: self.judge.enabled)
        self.defects = DefectTracker()  # public: the MQTT lifecycle ends a defect no frame followed

    def add_sink(self, sink: ResultSink) -> None:
        """For sinks built after the pipeline, like the MQTT sink that pulls `pipeline.stats`.

        It goes first: the MQTT sink has an event on disk before the console reports the defect.
        """
        self.sinks.insert(0, sink)

    def stop(self) -> None:
        """Finish gracefully: no new frames, queued ones still scored. Safe in a signal handler."""
        self._stop.set()
        self.source.close()

    def run(self) -> dict:
        """Inspect until the source ends, `max_frames` are done or `stop()`; returns the final stats."""
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        capture.start()
        try:
            while self.max_frames is None or self.stats.frames_processed < self.max_frames:
                frame = self._queue.get()
                if frame is _END:
                    break
                self._process(frame)
        finally:
            self.stop()
            # Empty the queue so a capture thread blocked on a full one can finish.
            while capture.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            capture.join()
            self._close_sinks()
        if self._capture_error is not None:
            raise self._capture_error
        return self.stats.snapshot()

    def _capture(self) -> None:
        captured = 0
        try:
            while not self._stop.is_set():
                if not self.source.is_live and self.max_frames is not None and captured >= self.max_frames:
                    break
                frame = self.source.read()
                if frame is None:
                    break
                self.stats.record_capture()
                captured += 1
                if self.source.is_live:
                    self._put_dropping_oldest(frame)
                else:
                    self._put_waiting(frame)
        except Exception as exc:  # noqa: BLE001 - handed to run(), which re-raises it in the main thread
            self._capture_error = exc
        finally:
            self.source.close()
            self._queue.put(_END)

    def _put_dropping_oldest(self, frame: Frame) -> None:
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.stats.record_drop()
                except queue.Empty:  # inference took it meanwhile
                    pass

    def _put_waiting(self, frame: Frame) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                pass

    def _process(self, frame: Frame) -> None:
        if not self.judge.enabled:  # paused by a `detect/set OFF` command: read, counted, not judged
            self._paused()
            return
        try:
            result = self.judge.judge(frame)
        except CorruptFrameError as exc:
            self.stats.record_corrupt()
            log.warning("frame %d skipped: %s", frame.index, exc)
            return
        if not self.judge.enabled:  # paused while it was judged: no event after the pause's answer
            self._paused()
            return
        self.defects.assign(result)
        self.stats.record_frame(result.latency_s, result.is_defect)
        for sink in self.sinks:
            try:
                sink.handle(result)
            except Exception:
                # One broken sink (a full disk, a lost broker) must not stop the inspection.
                count = self._sink_errors[id(sink)] = self._sink_errors.get(id(sink), 0) + 1
                if count % _SINK_ERROR_LOG_EVERY == 1:
                    log.exception("%s failed on frame %d (failure %d)", type(sink).__name__, frame.index, count)

    def _paused(self) -> None:
        self.stats.record_paused()
        self.defects.end()  # a pause breaks a defect as a good frame does

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing %s failed", type(sink).__name__)
