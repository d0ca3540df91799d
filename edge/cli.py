"""riad-edge: the command line of the inspector."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge.monitoring.logs import LogFormat, LogLevel, configure_logging, url_passwords

if TYPE_CHECKING:
    from edge.calibrate import Calibration

# The broker login, the same for run, watch and doctor.
Username = Annotated[str | None, typer.Option(help="Broker user name.")]
Password = Annotated[
    str | None, typer.Option(envvar="RIAD_MQTT_PASSWORD", help="Broker password (better: the RIAD_MQTT_PASSWORD variable).")
]
TlsCa = Annotated[Path | None, typer.Option(help="CA certificate for mqtts:// (default: the system's).")]
TlsCert = Annotated[Path | None, typer.Option(help="Client certificate for mqtts://.")]
TlsKey = Annotated[Path | None, typer.Option(help="Client certificate key for mqtts://.")]
BrokerUrl = Annotated[str, typer.Option(help="MQTT broker, mqtt://host[:port] or mqtts://...")]
RunCameraId = Annotated[str, typer.Option(help="The camera's name in MQTT topics, as given to run.")]
RunTopicPrefix = Annotated[str, typer.Option(help="First MQTT topic level, as given to run.")]
HaPrefix = Annotated[str | None, typer.Option(help="Home Assistant's MQTT discovery prefix (default homeassistant).")]
# The log (stderr) of every command; stdout keeps the results as text (edge/monitoring/logs.py).
LogLevel_ = Annotated[LogLevel, typer.Option("--log-level", envvar="RIAD_LOG_LEVEL", help="Log messages from this level up.")]
LogFormat_ = Annotated[LogFormat, typer.Option("--log-format", envvar="RIAD_LOG_FORMAT", help="text for people, json (one object per line) for journald, Loki, Elastic.")]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Watch a camera, find defects, publish them over MQTT.")


@app.callback()
def main() -> None:
    # Keeps `riad-edge run ...` a subcommand even while it is the only command.
    pass


@app.command("run")
def run_command(
    camera: Annotated[int | None, typer.Option("--camera", min=0, help="Camera number (V4L2), e.g. 0 for /dev/video0.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Source URI: /dev/video0, v4l2:///dev/video0, csi://0, rtsp://..., http(s)://..., gst://<GStreamer pipeline>, file://clip.mp4, a video file, an image folder.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "--engine", help="Model file: .onnx (CPU) or .plan/.engine (TensorRT), its manifest beside it.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Station config (YAML): many cameras in one process, each with its source, model, mode...; see edge/station/config.py.")] = None,
    mode: Annotated[str, typer.Option(help="free: judge every frame, publish defects; triggered: judge the frame(s) after each MQTT trigger, publish a verdict per part.")] = "free",
    deadline_ms: Annotated[float, typer.Option(min=1, help="Triggered mode: a verdict later than this after its trigger is an error.")] = 2000.0,
    broker: Annotated[str | None, typer.Option(help="MQTT broker, mqtt://host[:port] or mqtts://...; without it defects are only printed.")] = None,
    username: Username = None,
    password: Password = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    spool: Annotated[Path | None, typer.Option(help="Where undelivered MQTT events wait (default: ~/.local/state/riad-edge/<camera-id>.spool).")] = None,
    camera_id: Annotated[str | None, typer.Option(help="Name in MQTT topics (default from the source: cam0, the file name...).")] = None,
    topic_prefix: Annotated[str, typer.Option(help="First MQTT topic level.")] = "riad",
    max_frames: Annotated[int | None, typer.Option(min=1, help="Stop after inspecting this many frames.")] = None,
    save_dir: Annotated[Path | None, typer.Option(help="Save each defective frame and its heatmap overlay here as JPEG.")] = None,
    save_limit_mb: Annotated[float | None, typer.Option(min=0, help="Keep --save-dir under this many MB (default 1024), deleting the oldest snapshots first; 0: no limit.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Anomaly score threshold (default: the model manifest's).")] = None,
    view_port: Annotated[int, typer.Option(min=0, max=65535, help="Serve the live view (frame, heatmap, scores, defects) on this HTTP port; 0: off.")] = 0,
    view_host: Annotated[str, typer.Option(help="Address the live view listens on; 0.0.0.0 for the whole network.")] = "127.0.0.1",
    view_password: Annotated[str | None, typer.Option(envvar="RIAD_VIEW_PASSWORD", help="Ask for this password (HTTP Basic, any user name) before showing the live view (better: the RIAD_VIEW_PASSWORD variable).")] = None,
    ha_discovery: Annotated[bool, typer.Option("--ha-discovery", help="Announce each camera to Home Assistant (MQTT discovery): one device with its sensors, no YAML; see docs/mqtt.md.")] = False,
    ha_prefix: HaPrefix = None,
    metrics_port: Annotated[int | None, typer.Option(min=1, max=65535, envvar="RIAD_METRICS_PORT", help="Serve Prometheus /metrics and /healthz on this HTTP port, e.g. 9108 (default: off; see docs/monitoring.md).")] = None,
    metrics_host: Annotated[str | None, typer.Option(help="Address /metrics and /healthz listen on (default 127.0.0.1, this machine only); 0.0.0.0 for a Prometheus on another machine.")] = None,
    health_grace: Annotated[float | None, typer.Option(help="/healthz answers 503 once a camera has given no frame, or its broker has been away, this many seconds (default 60).")] = None,
    log_level: LogLevel_ = LogLevel.warning,
    log_format: LogFormat_ = LogFormat.text,
    commands: Annotated[bool, typer.Option("--commands", help="Obey MQTT commands (<prefix>/<camera>/detect/set, threshold/set, snapshot/set; docs/mqtt.md). Off: anyone on the broker could pause the line; commands are then answered with how to enable them.")] = False,
) -> None:
    """Inspect frames from a camera, stream, video or folder; report defects.

    Ctrl-C or SIGTERM stops gracefully: queued frames are finished, MQTT says offline.
    A second Ctrl-C aborts at once, naming any defect events held in memory that it loses.

    Exit codes: 0 done or stopped; 1 the inspection stopped on an error (the message says
    which); 2 bad model, manifest, broker settings, topic names or options; 3 source
    unavailable (no such camera, file or folder, unreadable video, or no readable frame in
    a file or folder); 5 a file or folder run ended with MQTT events not delivered (they
    wait in the spool); 6 defect events were lost (the spool's disk was full); 130 aborted
    by a second Ctrl-C.
    """
    from edge.runner import run_inspection

    configure_logging(log_level, log_format, [password, view_password, *url_passwords(broker), *url_passwords(source)])
    _check_monitoring(metrics_host, health_grace)
    ha = _ha_prefix(ha_discovery, ha_prefix, broker, config)
    if config is not None or mode != "free":
        raise typer.Exit(_run_station(
            config, camera=camera, source=source, model=model, mode=mode, deadline_ms=deadline_ms, threshold=threshold,
            camera_id=camera_id, spool=spool, topic_prefix=topic_prefix, broker=broker, username=username, password=password,
            tls=(tls_ca, tls_cert, tls_key), single_camera_only=(max_frames, save_dir, view_port),
            monitoring=(metrics_port, metrics_host, health_grace), ha=ha, commands=commands,
        ))
    if model is None:
        raise typer.BadParameter("give --model (or --config for a station)")
    if (camera is None) == (source is None):
        raise typer.BadParameter("give exactly one of --camera N or --source URI")
    if metrics_host is not None and metrics_port is None:
        raise typer.BadParameter("--metrics-host needs --metrics-port")
    if metrics_port is not None and metrics_port == view_port:
        raise typer.BadParameter(f"--metrics-port and --view-port are both {view_port}: give them different ports")
    if threshold is not None and not math.isfinite(threshold):
        # NaN compares false and inf is never exceeded: the line would run with no alert ever.
        raise typer.BadParameter(f"--threshold must be a finite number, not {threshold}")
    code = run_inspection(
        str(camera) if camera is not None else source,
        model,
        broker_url=broker,
        username=username,
        password=password,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        spool=spool,
        camera_id=camera_id,
        topic_prefix=topic_prefix,
        max_frames=max_frames,
        save_dir=save_dir,
        save_limit_mb=save_limit_mb,
        threshold=threshold,
        view=(view_host, view_port) if view_port else None,
        view_password=view_password,
        ha_prefix=ha,
        metrics=(metrics_host, metrics_port) if metrics_port else None,
        health_grace=health_grace,
        commands=commands,
    )
    raise typer.Exit(code)


def _ha_prefix(enabled: bool, prefix: str | None, broker: str | None, config: Path | None) -> str | None:
    """The Home Assistant discovery prefix of a run, None for no discovery."""
    if not enabled:
        if prefix is not None:
            raise typer.BadParameter("--ha-prefix goes with --ha-discovery; give both")
        return None
    if broker is None and config is None:  # a config file may name its broker
        raise typer.BadParameter("--ha-discovery needs --broker: Home Assistant finds the camera on the broker")
    from edge.sinks.ha_discovery import DEFAULT_HA_PREFIX

    return DEFAULT_HA_PREFIX if prefix is None else prefix


def _check_monitoring(host: str | None, grace: float | None) -> None:
    if host == "":
        raise typer.BadParameter("--metrics-host must be an address, e.g. 127.0.0.1 or 0.0.0.0")
    if grace is not None and not (math.isfinite(grace) and grace > 0):
        raise typer.BadParameter(f"--health-grace must be a positive number of seconds, not {grace}")


def _run_station(config, *, camera, source, model, mode, deadline_ms, threshold, camera_id, spool, topic_prefix,
                 broker, username, password, tls, single_camera_only, monitoring, ha=None, commands=False) -> int:
    """--config, or one camera's flags with --mode triggered: the station runs it (edge/station).

    `tls` is (ca, cert, key); `single_camera_only` the options a station refuses,
    (max_frames, save_dir, view_port); `monitoring` is (metrics_port, metrics_host, health_grace).
    """
    from edge.runner import fail
    from edge.station.config import MODES, CameraConfig, ConfigError, StationConfig, load_config
    from edge.station.run import run_station

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    max_frames, save_dir, view_port = single_camera_only
    if max_frames is not None or save_dir is not None or view_port:
        raise typer.BadParameter("--max-frames, --save-dir and --view-port work with one free-running camera only, not with --config or --mode triggered")
    if config is not None:
        if any(v is not None for v in (camera, source, model, threshold, camera_id, spool)) or mode != "free":
            raise typer.BadParameter("with --config the cameras, models, modes and thresholds come from the file; give only broker, metrics and log options beside it")
        try:
            station = load_config(config)
        except ConfigError as exc:
            return fail(str(exc), 2)
        if topic_prefix != "riad":
            station.topic_prefix = topic_prefix
    else:
        if model is None or (camera is None) == (source is None):
            raise typer.BadParameter("--mode triggered needs --model and exactly one of --camera N or --source URI")
        if threshold is not None and not math.isfinite(threshold):
            raise typer.BadParameter(f"--threshold must be a finite number, not {threshold}")
        uri = str(camera) if camera is not None else source
        one = CameraConfig(camera_id, uri, model, mode, threshold, deadline_ms / 1000.0, spool, roi_from_model=True)
        station = StationConfig([one], topic_prefix=topic_prefix)
    metrics_port, metrics_host, health_grace = monitoring  # given on the command line: they win over the file's
    station.metrics_port = metrics_port or station.metrics_port
    station.metrics_host = metrics_host or station.metrics_host
    station.health_grace_s = health_grace or station.health_grace_s
    if station.metrics_host is not None and station.metrics_port is None:
        raise typer.BadParameter("--metrics-host needs --metrics-port (or metrics_port in the config)")
    tls_ca, tls_cert, tls_key = tls
    return run_station(station, broker_url=broker, username=username, password=password, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, ha_prefix=ha,
                       commands=commands)


@app.command("watch")
def watch_command(
    broker: Annotated[str, typer.Option(help="MQTT broker, mqtt://host[:port] or mqtts://...")],
    camera_id: Annotated[str, typer.Option(help="Camera to watch; + for all.")] = "+",
    topic_prefix: Annotated[str, typer.Option(help="First MQTT topic level.")] = "riad",
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many defect events and verdicts.")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds.")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="Print each message as one JSON line.")] = False,
    username: Username = None,
    password: Password = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    log_level: LogLevel_ = LogLevel.warning,
    log_format: LogFormat_ = LogFormat.text,
) -> None:
    """Print defect alerts, triggered cameras' verdicts and camera availability as they arrive (see docs/mqtt.md).

    Exit codes: 0 done; 1 --timeout passed before --count events; 2 broker unreachable or login refused.
    """
    from edge.sinks.broker import BrokerError, parse_broker_url
    from edge.sinks.topics import TopicError
    from edge.watch import watch

    configure_logging(log_level, log_format, [password, *url_passwords(broker)])
    try:
        config = parse_broker_url(broker, username, password, tls_ca, tls_cert, tls_key)
        seen = watch(config, camera_id, topic_prefix, count, timeout, json_lines)
    except (BrokerError, TopicError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if count is not None and seen < count:
        typer.echo(f"timed out after {timeout:g} s with {seen} of {count} defect events and verdicts", err=True)
        raise typer.Exit(1)


@app.command("doctor")
def doctor_command(
    camera: Annotated[int | None, typer.Option("--camera", min=0, help="Camera number to test, e.g. 0 for /dev/video0.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Source URI to test instead of a camera (as for run).")] = None,
    model: Annotated[Path | None, typer.Option("--model", "--engine", help="Model file to load and score a frame with.")] = None,
    broker: Annotated[str | None, typer.Option(help="MQTT broker to log in to, mqtt://host[:port] or mqtts://...")] = None,
    username: Username = None,
    password: Password = None,
    tls_ca: TlsCa = None,
    spool_dir: Annotated[Path | None, typer.Option(help="Folder of the MQTT spool to check (default with --broker: ~/.local/state/riad-edge).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Check every camera of a station config (as run --config starts them): source, model, broker, spools.")] = None,
    log_level: LogLevel_ = LogLevel.warning,
    log_format: LogFormat_ = LogFormat.text,
) -> None:
    """Check that this machine can inspect: camera, GPU, model, broker, spool disk.

    Checks the GPU, and what is given: the source, the model, the broker, and the spool
    (undelivered events wait there) with --broker or --spool-dir. So `doctor --model X`
    checks only that X loads and scores here. `--config line.yaml` checks each camera of a
    station: its source, its model through its ROI, the file's broker and the spools.

    Prints OK / WARN / FAIL per check with what to fix. Exit code 0 when nothing FAILs, 1
    otherwise; 2 for a config file that cannot be read.
    """
    from edge.doctor import FAIL, format_table, run_checks, station_checks
    from edge.sinks.spool import default_spool_path

    secrets = [password, *url_passwords(broker), *url_passwords(source)]
    configure_logging(log_level, log_format, secrets)
    if camera is not None and source is not None:
        raise typer.BadParameter("give one of --camera N or --source URI")
    if config is not None:
        from edge.runner import fail
        from edge.station.config import ConfigError, load_config

        if any(v is not None for v in (camera, source, model, spool_dir)):
            raise typer.BadParameter("with --config the cameras, models and spools come from the file; give only broker and log options beside it")
        try:
            station = load_config(config)
        except ConfigError as exc:
            raise typer.Exit(fail(str(exc), 2)) from None
        # Again with the file's own secrets, known only now (the error above needed the log set up).
        configure_logging(log_level, log_format, [*secrets, *url_passwords(station.broker),
                                                  *(p for c in station.cameras for p in url_passwords(c.source))])
        checks = station_checks(station, broker, username, password, tls_ca)
    else:
        uri = str(camera) if camera is not None else source
        if spool_dir is None and broker is not None:
            spool_dir = default_spool_path("cam").parent
        checks = run_checks(uri, model, broker, username, password, tls_ca, spool_dir)
    typer.echo(format_table(checks))
    raise typer.Exit(1 if any(c.status == FAIL for c in checks) else 0)


@app.command("demo")
def demo_command(
    model: Annotated[Path | None, typer.Option(help="Model to run (default: the bundled bottle model).")] = None,
    source: Annotated[Path | None, typer.Option(help="Clip to inspect (default: the bundled bottle clip).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the defect snapshots and heatmap overlays.")] = Path("riad-demo"),
    view_port: Annotated[int, typer.Option(min=0, max=65535, help="Also serve the live view on this port; 0: off.")] = 0,
    log_level: LogLevel_ = LogLevel.warning,
    log_format: LogFormat_ = LogFormat.text,
) -> None:
    """The whole loop on the bundled sample: broker, inspector, alerts over MQTT, overlays.

    Needs no camera, GPU or broker of your own. Exit codes as for run; 4: no MQTT broker
    program (install mosquitto or amqtt).
    """
    from edge.demo import DEFAULT_MODEL, DEFAULT_SOURCE, run_demo

    configure_logging(log_level, log_format)
    raise typer.Exit(run_demo(model or DEFAULT_MODEL, source or DEFAULT_SOURCE, out, view_port))


@app.command("calibrate")
def calibrate_command(
    model: Annotated[Path, typer.Argument(help="The model whose threshold to set: .onnx, or .plan/.engine on its GPU; its manifest is rewritten.")],
    good_images: Annotated[Path, typer.Argument(help="A folder of images of good parts, as the camera sees them, that the model did not train on.")],
    false_alarm_rate: Annotated[
        float | None,
        typer.Option(help="Set the threshold for this share of good parts flagged, e.g. 0.01 (default: max(mean + 3 std, max) of their scores, as export)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Score and print the threshold; leave the manifest as it is.")] = False,
    log_level: LogLevel_ = LogLevel.warning,
    log_format: LogFormat_ = LogFormat.text,
) -> None:
    """Set the alert threshold again from good parts seen on the line.

    Export sets it from a few held-out training images; when good parts on the line raise
    alarms, save a hundred or more of them and run this. Each image is scored as run
    scores a frame, export's rule sets the threshold, and the model's manifest is rewritten
    (whole or not at all); a running riad-edge uses it from its next start. Any defective
    part among the images raises the threshold: the highest scores are printed to check.

    Exit codes: 0 done; 2 bad model, manifest or option, or the manifest cannot be rewritten;
    3 no folder, or fewer than 2 readable images in it.
    """
    from edge.backends import BackendError
    from edge.calibrate import CalibrationError, GoodImagesError, calibrate_model
    from edge.manifest import ManifestError

    configure_logging(log_level, log_format)

    def progress(done: int, total: int) -> None:
        typer.echo(f"\rscoring {done}/{total}", nl=done == total, err=True)

    try:
        shown = progress if sys.stderr.isatty() else None
        result = calibrate_model(model, good_images, false_alarm_rate, write=not dry_run, progress=shown)
    except (BackendError, ManifestError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except CalibrationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3 if isinstance(exc, GoodImagesError) else 2) from None
    typer.echo(format_calibration(result, false_alarm_rate))


SKIPPED_NAMED = 5  # unreadable images named one by one; a folder of a thousand is summed up


def format_calibration(result: Calibration, false_alarm_rate: float | None) -> str:
    """What calibrate did, for the person who ran it."""
    from edge.method.threshold import rule_summary

    record, n = result.record, len(result.scores)
    highest = sorted(result.scores.items(), key=lambda item: item[1], reverse=True)[:3]
    rule = rule_summary(false_alarm_rate, "their scores")
    lines = [
        f"scored:    {n} good images in {record['images']}",
        f"scores:    mean {record['good_mean']:.4f}, std {record['good_std']:.4f}; highest "
        + ", ".join(f"{score:.4f} ({path.name})" for path, score in highest),
        f"threshold: {result.old_threshold:.4f} -> {result.threshold:.4f} ({rule})",
        f"flagged:   {result.flagged(result.old_threshold)} of {n} at the old threshold, {result.flagged(result.threshold)} at the new",
    ]
    if result.outlier:
        path, score, mean, others = result.outlier
        lines.append(
            f"check:     {path.name} scores {score:.4f}; the other {n - 1} images average {mean:.4f} and set {others:.4f}. "
            "A good part is seldom that far out: if it is not one, remove it and calibrate again"
        )
    if result.overlays:
        lines.append(f"skipped:   {result.overlays} heatmap overlays (the *_overlay.jpg of riad-edge run --save-dir)")
    named = list(result.skipped.items())[:SKIPPED_NAMED]
    lines += [f"skipped:   {path.name}: {why}" for path, why in named]
    if len(result.skipped) > len(named):
        lines.append(f"skipped:   {len(result.skipped) - len(named)} more unreadable images")
    if result.written:
        lines.append(
            f"manifest:  {result.manifest_path} rewritten; riad-edge uses it from its next start, "
            "unless a --threshold or a station config's threshold overrides it"
        )
    else:
        lines.append(f"manifest:  {result.manifest_path} left as it is (--dry-run)")
    return "\n".join(lines)


ha_app = typer.Typer(no_args_is_help=True, help="Home Assistant MQTT discovery of a camera without running it: publish or remove its entities.")
app.add_typer(ha_app, name="ha-discovery")


@ha_app.command("publish")
def ha_publish_command(
    broker: BrokerUrl,
    camera_id: RunCameraId,
    topic_prefix: RunTopicPrefix = "riad",
    ha_prefix: HaPrefix = None,
    commands: Annotated[bool, typer.Option("--commands", help="Also the controls (inspection switch, threshold, snapshot button) of run --commands.")] = False,
    triggered: Annotated[bool, typer.Option("--triggered", help="Also the verdict sensor of a camera in triggered mode.")] = False,
    username: Username = None,
    password: Password = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Publish a camera's discovery configs (retained), as run --ha-discovery does at start.

    Its entities stay unavailable until the camera's inspector runs. Exit codes: 0 done;
    2 broker unreachable, login refused, or a name that cannot be a topic.
    """
    from edge.sinks.ha_discovery import DEFAULT_HA_PREFIX, publish_configs

    prefix = DEFAULT_HA_PREFIX if ha_prefix is None else ha_prefix
    count = _ha_broker_call(publish_configs, broker, username, password, tls_ca, tls_cert, tls_key, topic_prefix, camera_id,
                            ha_prefix=prefix, commands_enabled=commands, triggered=triggered)  # fmt: skip
    typer.echo(f"published {count} discovery config(s) of camera {camera_id!r} under {prefix}/")


@ha_app.command("remove")
def ha_remove_command(
    broker: BrokerUrl,
    camera_id: RunCameraId,
    topic_prefix: RunTopicPrefix = "riad",
    ha_prefix: HaPrefix = None,
    username: Username = None,
    password: Password = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Remove a camera's device and entities from Home Assistant and its retained configs from the broker.

    Publishes an empty retained message to each of the camera's discovery topics. Stop the
    camera's `run --ha-discovery` first, or it announces the camera again when it reconnects.
    Exit codes: 0 done; 2 broker unreachable, login refused, or a name that cannot be a topic.
    """
    from edge.sinks.ha_discovery import DEFAULT_HA_PREFIX, remove_configs

    prefix = DEFAULT_HA_PREFIX if ha_prefix is None else ha_prefix
    found = _ha_broker_call(remove_configs, broker, username, password, tls_ca, tls_cert, tls_key, topic_prefix, camera_id, ha_prefix=prefix)
    typer.echo(f"removed {len(found)} retained discovery config(s) of camera {camera_id!r} from {prefix}/")


def _ha_broker_call(action, broker, username, password, tls_ca, tls_cert, tls_key, *args, **kwargs):
    """`action(broker config, *args, **kwargs)`; a bad broker or name is a one-line error and exit code 2."""
    from edge.sinks.broker import BrokerError, parse_broker_url
    from edge.sinks.topics import TopicError

    try:
        return action(parse_broker_url(broker, username, password, tls_ca, tls_cert, tls_key), *args, **kwargs)
    except (BrokerError, TopicError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
