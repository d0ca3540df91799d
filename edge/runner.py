"""`riad-edge run`, wired: model -> backend, URI -> source, options -> sinks; errors -> exit codes.

Exit codes (also in the command's help):
    0    the source ended, --max-frames were inspected, or SIGINT/SIGTERM stopped the run
    1    the inspection stopped on an error after it had started (the message says which)
    2    bad input: the model or its manifest, the broker settings, the snapshot folder, the options
    3    the source is unavailable: no such camera, file or folder, an unreadable video, or
         a file or folder in which not one frame could be read
    5    with --broker, a file or folder run ended with events undelivered: they wait in the
         spool (the next start delivers them), or the broker can never take them (set aside)
    6    with --broker, defect events were lost: the spool's disk was full and the memory
         queue too (each logged as DROPPED or LOST); takes precedence over 5, for any source
    130  a second SIGINT aborted the run at once (143 for a second SIGTERM)
(4 is `riad-edge demo`'s: no broker program.)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

from edge.backends import BackendError, open_backend
from edge.sinks.broker import BrokerError, parse_broker_url
from edge.manifest import ManifestError
from edge.method.inspection import FrameJudge
from edge.monitoring.camera import WatchedCamera
from edge.monitoring.logs import set_camera
from edge.paths import make_folder
from edge.pipeline import Pipeline
from edge.results import FrameResult
from edge.sinks.ha_discovery import check_ha_prefix, ha_hooks, node_id
from edge.sinks.snapshots import DEFAULT_LIMIT_MB, SnapshotSaver
from edge.sources.cameras import SourceError, open_source, quiet_opencv, without_passwords
from edge.sinks.spool import SpoolError, default_spool_path
from edge.sinks.topics import TopicError, check_names

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INSPECTION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SOURCE_UNAVAILABLE = 3
EXIT_UNDELIVERED = 5
EXIT_EVENTS_LOST = 6
BOXES_SHOWN = 5  # per console line; the MQTT event carries them all


class ConsoleSink:
    """One line per defective frame on stdout: score, threshold and the regions found."""

    def __init__(self, camera_id: str):
        self.camera_id = camera_id

    def handle(self, result: FrameResult) -> None:
        if result.is_defect:
            print(format_defect(self.camera_id, result), flush=True)

    def close(self) -> None:
        """Nothing to release."""


def format_defect(camera_id: str, result: FrameResult) -> str:
    boxes = " ".join(f"[x={b.x} y={b.y} w={b.width} h={b.height} peak={b.peak:.4f}]" for b in result.boxes[:BOXES_SHOWN])
    more = f" +{len(result.boxes) - BOXES_SHOWN} more" if len(result.boxes) > BOXES_SHOWN else ""
    return (
        f"DEFECT {camera_id} frame {result.frame_index} score {result.score:.4f} > {result.threshold:.4f} "
        f"boxes {len(result.boxes)}: {boxes}{more}"
    )


def format_summary(summary: dict) -> str:
    return (
        f"summary: {summary['frames_processed']} frames, {summary['defects']} defective, "
        f"{summary['frames_dropped']} dropped, {summary['frames_corrupt']} corrupt, "
        f"{summary['reconnects']} reconnects; {summary['fps']:.1f} fps, latency p50 "
        f"{summary['latency_p50_ms']:.1f} ms, p99 {summary['latency_p99_ms']:.1f} ms"
    )


def fail(message: str, code: int) -> int:
    from edge.monitoring.logs import print_error

    print_error(message)
    return code


def run_inspection(
    source_uri: str,
    model_path: Path,
    *,
    broker_url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    spool: Path | None = None,
    camera_id: str | None = None,
    topic_prefix: str = "riad",
    max_frames: int | None = None,
    save_dir: Path | None = None,
    save_limit_mb: float | None = None,
    threshold: float | None = None,
    view: tuple[str, int] | None = None,
    view_password: str | None = None,
    console: bool = True,
    ha_prefix: str | None = None,
    metrics: tuple[str | None, int] | None = None,
    health_grace: float | None = None,
    commands: bool = False,
) -> int:
    """Runs one inspection to its end and returns the process exit code."""
    quiet_opencv()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with ExitStack() as stack:
        try:
            broker = None
            if broker_url is not None:  # "" too: an empty --broker is a mistake, not "MQTT off"
                broker = parse_broker_url(broker_url, username, password, tls_ca, tls_cert, tls_key)
                # A name the broker refuses would be spooled for ever: check it before anything runs.
                check_names(topic_prefix, camera_id or "cam")
                if ha_prefix is not None:
                    check_ha_prefix(ha_prefix)
            if commands and broker is None:
                raise ValueError("--commands needs --broker: commands arrive over MQTT")
            if view is not None:
                _check_view_password(view[0], view_password)
            monitor = _monitor(stack, metrics, health_grace)
            backend = stack.enter_context(open_backend(model_path))
        except (ManifestError, BackendError, BrokerError, TopicError, ValueError) as exc:
            return fail(str(exc), EXIT_BAD_INPUT)
        try:
            source = stack.enter_context(open_source(source_uri))
        except SourceError as exc:
            return fail(str(exc), EXIT_SOURCE_UNAVAILABLE)
        camera_id = camera_id or source.camera_id
        set_camera(camera_id)  # the `camera` of JSON log lines
        threshold = backend.manifest.threshold if threshold is None else threshold
        print(f"backend: {backend.name}, model {backend.manifest.model_id} ({backend.manifest.input_width}x{backend.manifest.input_height} px), threshold {threshold:.4f}")
        print(f"source: {source.description} as camera '{camera_id}'")

        # The demo turns the console lines off: its watcher prints the same alerts from MQTT.
        sinks: list = [ConsoleSink(camera_id)] if console else []
        saver = None
        if save_dir is not None:
            try:
                if save_limit_mb is None:
                    save_limit_mb = DEFAULT_LIMIT_MB
                saver = SnapshotSaver(save_dir, save_limit_mb)
            except (OSError, ValueError) as exc:
                return fail(f"cannot use snapshot folder {save_dir}: {getattr(exc, 'strerror', None) or exc}", EXIT_BAD_INPUT)
            sinks.append(saver)
        if view is not None:
            from edge.sinks.liveview import LiveView, LiveViewError

            try:
                live = LiveView(*view, password=view_password)
            except LiveViewError as exc:
                return fail(str(exc), EXIT_BAD_INPUT)
            sinks.append(live)
            print(f"live view: {live.url}" + (" (password required)" if view_password else ""))
        # One camera's frames are cropped as the model's training images were (train --roi).
        crop = backend.manifest.crop
        if crop is not None:
            print(f"roi: {crop.spec()} (the crop the model was trained on)")
        pipeline = Pipeline(source, backend, sinks, max_frames=max_frames, judge=FrameJudge(backend, threshold, crop))
        publisher = None
        if broker is not None:
            try:
                publisher = open_publisher(broker, camera_id, topic_prefix, spool, backend.manifest, pipeline.stats.snapshot, ha_prefix, commands)
            except (BrokerError, SpoolError, ValueError, OSError) as exc:
                return fail(str(exc), EXIT_BAD_INPUT)
            _listen_for_commands(stack, broker, topic_prefix, camera_id, publisher, pipeline, commands)
            print(f"mqtt: {broker.url}, topics {topic_prefix}/{camera_id}/..., commands {'on' if commands else 'off (--commands)'}")
            if ha_prefix is not None:
                print(f"home assistant: discovery configs under {ha_prefix}/<component>/{node_id(topic_prefix, camera_id)}/")
        else:
            print("mqtt: off (no --broker); defects are printed here")
        if monitor is not None:
            monitor.watch(WatchedCamera(camera_id, "free", backend.manifest.model_id, backend.name, pipeline.stats, source.is_live, publisher))
            print(f"metrics: {monitor.url}/metrics, health {monitor.url}/healthz")

        try:
            with _stop_on_signals(pipeline) as signals:
                summary = pipeline.run()
        except Exception as exc:
            # pipeline.run() has closed the sinks (MQTT said offline); the stack closes the rest.
            log.debug("inspection stopped", exc_info=True)
            return fail(f"inspection stopped: {_one_line(exc)}", EXIT_INSPECTION_FAILED)
        print(format_summary(summary))
        if saver is not None:
            failed = f", {saver.failed} could not be written" if saver.failed else ""
            deleted = f", the oldest {saver.deleted} deleted to stay under {save_limit_mb:g} MB" if saver.deleted else ""
            print(f"snapshots: {saver.saved} defective frames saved in {save_dir}{failed}{deleted}")
        if publisher is not None:
            print(format_delivery(publisher))
        if not source.is_live and summary["frames_processed"] == 0 and summary["frames_corrupt"] and not signals.received:
            # Zero frames would read as a clean run to a line controller checking the exit code.
            return fail(f"no readable frame in {without_passwords(source_uri)}", EXIT_SOURCE_UNAVAILABLE)
        # A line controller checks the exit code: loss, and a batch not yet at the broker, must not read as 0.
        if publisher is not None and publisher.lost:
            return fail(f"{publisher.lost} defect event(s) lost: the spool's disk was full", EXIT_EVENTS_LOST)
        if publisher is not None and not source.is_live and (publisher.undelivered or publisher.set_aside):
            return fail("not every event reached the broker (see mqtt: above)", EXIT_UNDELIVERED)
    return EXIT_OK


def format_delivery(publisher) -> str:
    """Where the run's MQTT messages are at its end: delivered, waiting, set aside, lost."""
    parts = []
    if publisher.undelivered:
        parts.append(f"{publisher.undelivered} message(s) undelivered, waiting in spool {publisher.spool.path}")
    if publisher.set_aside:
        parts.append(f"{publisher.set_aside} set aside in the spool (the broker can never take them)")
    if publisher.lost:
        parts.append(f"{publisher.lost} defect event(s) LOST (spool full)")
    if publisher.broker_problem:
        parts.append(f"broker: {publisher.broker_problem}")
    return "mqtt: " + ("; ".join(parts) if parts else "every message delivered")


def _check_view_password(host: str, password: str | None) -> None:
    """An empty RIAD_VIEW_PASSWORD is a password forgotten, not an open view; an open network view is warned about."""
    if password is None and os.environ.get("RIAD_VIEW_PASSWORD") == "":
        raise ValueError("RIAD_VIEW_PASSWORD is set but empty: give the live view a password, or unset it for an open view")
    if not password and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the live view on %s has no password: anyone who can reach this machine sees the line; "
                    "set RIAD_VIEW_PASSWORD", host)


def _monitor(stack: ExitStack, metrics: tuple[str | None, int] | None, grace_s: float | None):
    """The /metrics and /healthz server, listening before the model loads: a port in use fails at once."""
    if metrics is None:
        return None
    from edge.monitoring.server import MonitoringServer

    return stack.enter_context(MonitoringServer(*metrics, grace_s=grace_s))


def _one_line(exc: Exception) -> str:
    """An exception as one line: its message's first line, or its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def open_publisher(broker, camera_id, topic_prefix, spool, manifest, stats_source, ha_prefix=None, commands=False, triggered=False):
    """A camera's MqttPublisher on its spool (default: default_spool_path), announced to Home Assistant with `ha_prefix`."""
    from edge.sinks.mqtt import MqttPublisher

    spool = spool or default_spool_path(camera_id)
    try:
        make_folder(spool.parent)
    except OSError as exc:
        raise SpoolError(f"cannot create the spool folder {spool.parent}: {exc.strerror or exc}") from None
    return MqttPublisher(
        broker,
        camera_id,
        spool,
        topic_prefix=topic_prefix,
        model_id=manifest.model_id,
        stats_source=stats_source,
        connect_hooks=ha_hooks(topic_prefix, camera_id, ha_prefix, manifest.model_id, commands_enabled=commands, triggered=triggered),
    )


def _listen_for_commands(stack, broker, topic_prefix, camera_id, publisher, pipeline, enabled) -> None:
    """The defect lifecycle and snapshots in place of the bare publisher, and the command topics (edge/sinks)."""
    from edge.sinks.commands import CommandListener, attach_controls

    controls = attach_controls(pipeline, publisher)
    stack.callback(CommandListener(broker, topic_prefix, {camera_id: controls}, enabled).close)


class Stoppable(Protocol):
    def stop(self) -> None: ...


class _stop_on_signals:
    """SIGINT/SIGTERM stop the pipeline (or a station) gracefully; a second one aborts at once."""

    def __init__(self, pipeline: Stoppable):
        self.pipeline = pipeline
        self.previous: dict[int, signal.Handlers | Callable | int | None] = {}
        self.received = False

    def _handle(self, signum, _frame) -> None:
        # os.write, not print: a handler interrupting a print must not print itself.
        if self.received:
            # The graceful stop hangs (a slow frame, a broker that does not answer): leave now.
            # The broker's last will still says offline, and the spool is safe on disk; only
            # events held in memory because the spool's disk was full go, and are counted.
            mqtt = sys.modules.get("edge.sinks.mqtt")  # not imported: nothing was published
            lost = mqtt.events_only_in_memory() if mqtt else 0
            os.write(2, f"aborted: LOST {lost} defect event(s) held in memory (the spool was full)\n".encode() if lost else b"aborted\n")
            os._exit(128 + signum)
        self.received = True
        os.write(2, f"{signal.Signals(signum).name}: finishing queued frames (again to abort)\n".encode())
        self.pipeline.stop()

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
