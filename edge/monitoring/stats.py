"""Running numbers of an inspection: throughput, latency, drops, defects.

Written by the pipeline's threads, read by whoever publishes them (the MQTT stats
topic, the final summary) through `snapshot()`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

# Upper bounds of the latency histogram (Prometheus's riad_frame_latency_seconds), from a
# Jetson engine's 10 ms to a CPU falling 10 s behind.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PipelineStats:
    """Thread-safe counters plus sliding windows for fps and latency.

    `source_counters` and `queue_depth` are read at snapshot time from the objects
    that own those numbers (the source counts its own reconnects and corrupt frames).
    """

    def __init__(
        self,
        latency_window: int = 500,
        fps_window_s: float = 5.0,
        source_counters: Callable[[], dict[str, int | bool]] | None = None,
        queue_depth: Callable[[], int] | None = None,
        detecting: Callable[[], bool] | None = None,
    ):
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._done_at: deque[float] = deque()
        self._fps_window_s = fps_window_s
        self._source_counters = source_counters
        self._queue_depth = queue_depth
        self.started_at = time.monotonic()
        self.last_frame_at: float | None = None  # monotonic time of the source's latest frame
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # per bucket; the last one is +Inf
        self._latency_sum = 0.0
        self._detecting = detecting
        self.frames_processed = 0
        self.frames_dropped = 0
        self.frames_corrupt = 0  # frames the source delivered but preprocessing refused
        self.defects = 0
        self.frames_paused = 0  # read while detection was off (`detect/set OFF`), not judged

    def record_frame(self, latency_s: float, defect: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames_processed += 1
            self.defects += int(defect)
            self._latencies.append(latency_s)
            self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
            self._latency_sum += latency_s
            self._done_at.append(now)
            self._forget_before(now - self._fps_window_s)

    def record_capture(self) -> None:
        """The source delivered a frame (inspected, dropped or corrupt later): the camera is alive."""
        self.last_frame_at = time.monotonic()

    def record_drop(self) -> None:
        with self._lock:
            self.frames_dropped += 1

    def record_paused(self) -> None:
        with self._lock:
            self.frames_paused += 1

    def record_corrupt(self) -> None:
        with self._lock:
            self.frames_corrupt += 1

    def latency_histogram(self) -> tuple[list[int], float]:
        """Every latency since the start: cumulative counts per LATENCY_BUCKETS_S bound and +Inf, and their sum."""
        with self._lock:
            counts, total = list(self._latency_counts), self._latency_sum
        for i in range(1, len(counts)):
            counts[i] += counts[i - 1]
        return counts, total

    def _forget_before(self, cutoff: float) -> None:
        while self._done_at and self._done_at[0] < cutoff:
            self._done_at.popleft()

    def snapshot(self) -> dict:
        """The numbers now, as a flat JSON-ready dict."""
        now = time.monotonic()
        source = self._source_counters() if self._source_counters else {}
        with self._lock:
            self._forget_before(now - self._fps_window_s)
            # A run younger than the window divides by its age, so a stall shows as falling fps.
            span = min(self._fps_window_s, now - self.started_at)
            fps = len(self._done_at) / span if span > 0 else 0.0
            latencies = np.asarray(self._latencies, dtype=np.float64) * 1000.0
            p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (0.0, 0.0)
            return {
                "fps": round(fps, 2),
                "latency_p50_ms": round(float(p50), 1),
                "latency_p99_ms": round(float(p99), 1),
                "frames_processed": self.frames_processed,
                "frames_dropped": self.frames_dropped,
                "frames_corrupt": self.frames_corrupt + source.get("frames_corrupt", 0),
                "defects": self.defects,
                "queue_depth": self._queue_depth() if self._queue_depth else 0,
                "reconnects": source.get("reconnects", 0),
                "disconnects": source.get("disconnects", 0),
                # False while the camera is gone and the source tries to reconnect.
                "source_connected": bool(source.get("connected", True)),
                "uptime_s": round(now - self.started_at, 1),
                "detecting": self._detecting() if self._detecting else True,
                "frames_paused": self.frames_paused,
            }
