"""`riad-edge run --config line.yaml` (and `run --mode triggered`): a station to its end, as exit codes.

Exit codes as for a single camera: 0 stopped (or every source ended); 1 a camera's
inspection stopped on an error (the others went on); 2 bad config, model, broker
settings or spool; 3 not one camera could be opened.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from edge.backends import BackendError
from edge.sinks.broker import BrokerError, parse_broker_url
from edge.manifest import ManifestError
from edge.monitoring.logs import set_camera
from edge.runner import EXIT_BAD_INPUT, EXIT_INSPECTION_FAILED, EXIT_OK, EXIT_SOURCE_UNAVAILABLE, _stop_on_signals, fail
from edge.sinks.ha_discovery import check_ha_prefix
from edge.sinks.spool import SpoolError
from edge.sources.cameras import quiet_opencv
from edge.station.config import StationConfig
from edge.station.station import Station


def _monitor(config: StationConfig):
    """The station's /metrics and /healthz server (metrics_port in the config or --metrics-port), or None."""
    if config.metrics_port is None:
        return None
    from edge.monitoring.server import MonitoringServer

    return MonitoringServer(config.metrics_host, config.metrics_port, config.health_grace_s)


def run_station(
    config: StationConfig,
    *,
    broker_url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    ha_prefix: str | None = None,
    commands: bool = False,
) -> int:
    quiet_opencv()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    broker_url = broker_url or config.broker
    triggered = [c.camera_id or c.source for c in config.cameras if c.mode == "triggered"]
    if commands and not broker_url:
        return fail("--commands needs a broker (--broker or broker: in the config): commands arrive over MQTT", EXIT_BAD_INPUT)
    if triggered and not broker_url:
        return fail(f"triggered camera(s) {', '.join(triggered)} need a broker to receive triggers (--broker or broker: in the config)", EXIT_BAD_INPUT)
    monitor = None
    try:
        broker = parse_broker_url(broker_url, username, password, tls_ca, tls_cert, tls_key) if broker_url else None
        if ha_prefix is not None:
            if broker is None:
                raise ValueError("Home Assistant discovery needs a broker (--broker or broker: in the config)")
            check_ha_prefix(ha_prefix)
        monitor = _monitor(config)  # before the models load: a port in use fails at once
        station = Station(config, broker, ha_prefix=ha_prefix, commands=commands).__enter__()
    except (ManifestError, BackendError, BrokerError, SpoolError, ValueError, OSError) as exc:
        if monitor is not None:
            monitor.close()
        return fail(str(exc), EXIT_BAD_INPUT)
    try:
        for camera in config.cameras:
            state = f"DOWN ({station.down[camera.camera_id]})" if camera.camera_id in station.down else camera.source
            print(f"camera {camera.camera_id}: {camera.mode}, {state}, model {camera.model.name}")
        for shared in station.backends.values():
            print(f"backend: {shared.name}, model {shared.manifest.model_id}, up to {shared.max_frames} frame(s) per batch")
        commands_state = "on" if commands else "off (--commands)"
        print(f"mqtt: {broker.url}, topics {config.topic_prefix}/<camera>/..., commands {commands_state}" if broker else "mqtt: off (no broker); verdicts and defects are printed here")
        if len(config.cameras) == 1:
            set_camera(config.cameras[0].camera_id or "cam")  # the `camera` of JSON log lines
        if monitor is not None:
            for watched in station.watched():
                monitor.watch(watched)
            print(f"metrics: {monitor.url}/metrics, health {monitor.url}/healthz")
        if len(station.down) == len(config.cameras):
            return fail("not one camera could be opened", EXIT_SOURCE_UNAVAILABLE)
        if station.triggers is not None:
            topics = ", ".join(station.triggers.handlers)
            if station.triggers.subscribed.wait(10):
                print(f"triggers: listening on {topics}", flush=True)
            else:
                print(f"warning: not yet subscribed to {topics} (broker unreachable?); retrying", file=sys.stderr)
        with _stop_on_signals(station):
            station.run()
        for camera_id, cam in station.triggered.items():
            print(f"summary {camera_id}: {cam.stats.snapshot()}")
        for shared in station.backends.values():
            print(f"batching {shared.manifest.model_id}: {shared.counters()}")
    finally:
        station.close()
        if monitor is not None:
            monitor.close()
    return EXIT_INSPECTION_FAILED if station.failed else EXIT_OK
