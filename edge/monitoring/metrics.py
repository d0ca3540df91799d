"""Prometheus metrics of the inspector, read from the running objects at each scrape.

A custom collector, not counters of its own: the numbers already live in each
camera's PipelineStats, its source and its MqttPublisher (the same the summary line and
the MQTT stats topic show), and are read when Prometheus asks. Per camera (label
`camera`):

    riad_frames_processed_total      counter    frames inspected
    riad_defective_frames_total      counter    frames above the threshold
    riad_frames_dropped_total        counter    frames a live camera delivered while inference was busy
    riad_frames_corrupt_total        counter    frames that could not be decoded or prepared
    riad_frames_paused_total         counter    frames read while detection was paused by a command
    riad_camera_reconnects_total     counter    times a live camera or stream came back after a drop
    riad_frame_latency_seconds       histogram  capture -> result, per inspected frame
    riad_last_frame_timestamp_seconds gauge     Unix time of the camera's latest frame (absent before the first)
    riad_camera_connected            gauge      1 while the source delivers (0: dropped and reconnecting, or never opened)
    riad_mqtt_connected              gauge      1 while the camera's broker connection is up (cameras with a broker)
    riad_mqtt_spool_messages         gauge      messages (events, overlays, verdicts) waiting in the spool for the broker
    riad_verdicts_total              counter    triggered cameras: verdicts, label verdict=OK|NOK|error
    riad_healthy                     gauge      1 when /healthz finds nothing wrong with the camera
    riad_model_info                  info       labels model_id, backend, mode
    riad_build_info                  info       labels version, python (no camera label)

plus the process's own process_* metrics (CPU seconds, resident memory, open files).
"""

from __future__ import annotations

import platform
import sqlite3
import threading
import time
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric

from edge.monitoring.camera import WatchedCamera
from edge.monitoring.health import camera_problems
from edge.monitoring.stats import LATENCY_BUCKETS_S

VERDICT_KINDS = (("OK", "ok"), ("NOK", "nok"), ("error", "error"))  # label value, VerdictStats key


def _version() -> str:
    try:
        return metadata.version("riad-edge-inspector")
    except metadata.PackageNotFoundError:  # run from a checkout
        return "unknown"


class InspectorCollector:
    """Collects the metrics of the cameras added with `watch()`, at scrape time."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._cameras: list[WatchedCamera] = []
        self._lock = threading.Lock()

    def watch(self, camera: WatchedCamera) -> None:
        with self._lock:
            self._cameras.append(camera)

    @property
    def cameras(self) -> list[WatchedCamera]:
        with self._lock:
            return list(self._cameras)

    def collect(self) -> Iterator[Metric]:
        build = InfoMetricFamily("riad_build", "The inspector's version", labels=["version", "python"])
        build.add_metric([_version(), platform.python_version()], {})
        yield build
        families = _Families()
        now, wall = time.monotonic(), time.time()
        for camera in self.cameras:
            families.add(camera, self.grace_s, now, wall)
        yield from families.all()


class _Families:
    """The metric families of one scrape, filled camera by camera."""

    def __init__(self) -> None:
        cam = ["camera"]
        self.processed = CounterMetricFamily("riad_frames_processed", "Frames inspected", labels=cam)
        self.defective = CounterMetricFamily("riad_defective_frames", "Frames scored above the threshold", labels=cam)
        self.dropped = CounterMetricFamily("riad_frames_dropped", "Frames of a live camera dropped while inference was busy", labels=cam)
        self.corrupt = CounterMetricFamily("riad_frames_corrupt", "Frames that could not be decoded or prepared", labels=cam)
        self.paused = CounterMetricFamily("riad_frames_paused", "Frames read while detection was paused, not judged", labels=cam)
        self.reconnects = CounterMetricFamily("riad_camera_reconnects", "Times a live camera or stream came back after a drop", labels=cam)
        self.latency = HistogramMetricFamily("riad_frame_latency_seconds", "Capture to result, per inspected frame", labels=cam)
        self.last_frame = GaugeMetricFamily("riad_last_frame_timestamp_seconds", "Unix time of the camera's latest frame", labels=cam)
        self.camera_connected = GaugeMetricFamily("riad_camera_connected", "1 while the camera's source delivers frames", labels=cam)
        self.mqtt_connected = GaugeMetricFamily("riad_mqtt_connected", "1 while the camera's MQTT connection is up", labels=cam)
        self.spool = GaugeMetricFamily("riad_mqtt_spool_messages", "Messages waiting in the spool for the broker", labels=cam)
        self.verdicts = CounterMetricFamily("riad_verdicts", "Verdicts of a triggered camera", labels=["camera", "verdict"])
        self.healthy = GaugeMetricFamily("riad_healthy", "1 when /healthz finds nothing wrong with the camera", labels=cam)
        self.model = InfoMetricFamily("riad_model", "The model a camera runs", labels=["camera", "model_id", "backend", "mode"])

    def add(self, camera: WatchedCamera, grace_s: float, now: float, wall: float) -> None:
        cam = [camera.camera_id]
        self.model.add_metric([camera.camera_id, camera.model_id, camera.backend, camera.mode], {})
        self.healthy.add_metric(cam, 0.0 if camera_problems(camera, grace_s, now) else 1.0)
        publisher = camera.publisher
        if publisher is not None:
            self.mqtt_connected.add_metric(cam, 1.0 if publisher.disconnected_since is None else 0.0)
            self.spool.add_metric(cam, _spool_depth(publisher))
        if camera.verdicts is not None:
            verdicts = camera.verdicts.snapshot()
            for label, key in VERDICT_KINDS:
                self.verdicts.add_metric([camera.camera_id, label], verdicts[key])
        if camera.stats is None:  # never opened: it has no numbers, and is not connected
            self.camera_connected.add_metric(cam, 0.0)
            return
        numbers = camera.stats.snapshot()
        self.processed.add_metric(cam, numbers["frames_processed"])
        self.defective.add_metric(cam, numbers["defects"])
        self.dropped.add_metric(cam, numbers["frames_dropped"])
        self.corrupt.add_metric(cam, numbers["frames_corrupt"])
        if "frames_paused" in numbers:  # where the inspector takes commands (detect/set OFF pauses it)
            self.paused.add_metric(cam, numbers["frames_paused"])
        self.reconnects.add_metric(cam, numbers["reconnects"])
        self.camera_connected.add_metric(cam, 1.0 if numbers["disconnects"] == numbers["reconnects"] else 0.0)
        counts, total = camera.stats.latency_histogram()
        bounds = [*map(str, LATENCY_BUCKETS_S), "+Inf"]
        self.latency.add_metric(cam, list(zip(bounds, counts)), total)
        last = camera.stats.last_frame_at
        if last is not None:
            self.last_frame.add_metric(cam, wall - (now - last))

    def all(self) -> list[Metric]:
        return [self.processed, self.defective, self.dropped, self.corrupt, self.paused, self.reconnects, self.latency,
                self.last_frame, self.camera_connected, self.mqtt_connected, self.spool, self.verdicts,
                self.healthy, self.model]  # fmt: skip


def _spool_depth(publisher) -> int:
    try:
        return publisher.spool.depth()
    except sqlite3.ProgrammingError:  # the publisher has closed its spool: what it left there
        return publisher.undelivered


def registry_for(collector: InspectorCollector) -> CollectorRegistry:
    """A registry of the inspector's metrics and the process's own (process_*), not the global default one."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
