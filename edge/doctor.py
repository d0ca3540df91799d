"""`riad-edge doctor`: is this machine ready to inspect? One line per check, and what to fix.

Each check tries the real thing the same way `riad-edge run` would (open the camera and
read a frame, load the model and score a frame, log in to the broker), so an OK here
means run will get past the same step.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge.station.config import CameraConfig, StationConfig

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SOURCE_TIMEOUT_S = 10.0
BROKER_TIMEOUT_S = 5.0
SPOOL_WARN_BYTES = 1 << 30  # a day of a broker outage at one defect a minute is ~75 MB; leave room


@dataclass
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str  # what was found
    fix: str = ""  # what to do about a WARN or FAIL


def check_source(uri: str, timeout: float = SOURCE_TIMEOUT_S) -> tuple[Check, np.ndarray | None]:
    """Opens the source and waits for one frame; the frame is returned for the model check."""
    from edge.sources.cameras import SourceError, open_source, quiet_opencv

    quiet_opencv()
    try:
        source = open_source(uri)
    except SourceError as exc:
        return Check("source", FAIL, str(exc), _source_fix(uri)), None
    got: list = []
    reader = threading.Thread(target=lambda: got.append(source.read()), daemon=True)
    started = time.monotonic()
    reader.start()
    reader.join(timeout)
    source.close()  # also ends a live source's reconnect loop if no frame came
    frame = got[0] if got else None
    if frame is None:
        why = f"no frame within {timeout:g} s" if reader.is_alive() else "it ended without a frame"
        return Check("source", FAIL, f"{source.description} opened, but {why}",
                     "check the cable, the lighting, and that no other program holds the camera"), None
    h, w = frame.image.shape[:2]
    return Check("source", OK, f"{source.description}: {w}x{h} frame in {time.monotonic() - started:.2f} s"), frame.image


def _source_fix(uri: str) -> str:
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme in ("rtsp", "rtsps", "http", "https"):
        return "check the URL, the login and that the camera streams there (try it with ffplay or VLC from this machine)"
    if scheme in ("", "v4l2", "file") and not uri.isdigit() and not uri.startswith(("/dev/", "v4l2://")):
        return "check the path: a video file or a folder of images this user can read"
    return "check the camera number or device; 'v4l2-ctl --list-devices' lists cameras"


def check_gpu(model: Path | None) -> Check:
    from edge.backends import ENGINE_SUFFIXES, cpu_twin
    from edge.backends.gpu_available import gpu_status
    from edge.manifest import ManifestError

    ready, what = gpu_status()
    if ready:
        return Check("gpu", OK, what)
    fix = "install JetPack's TensorRT and pycuda (docs/jetson.md)"
    if model is not None and model.suffix.lower() in ENGINE_SUFFIXES:
        try:
            twin = cpu_twin(model)
        except ManifestError:  # the model line says what is wrong with it
            twin = None
        if twin is None:
            return Check("gpu", FAIL, what, f"{fix}, or pass the .onnx model to use the CPU")
        return Check("gpu", WARN, f"{what}; run falls back to {twin} on the CPU, slower", fix)
    return Check("gpu", WARN, f"{what}; ONNX models run on the CPU, slower", fix)


def check_model(model: Path, frame: np.ndarray | None, camera: CameraConfig | None = None, name: str = "model") -> Check:
    """Loads the model as run would (manifest hash, engine built for this GPU) and scores a frame.

    With a station `camera`, as that camera's run would: through its ROI, ignore mask and threshold.
    """
    from edge.backends import BackendError, open_backend
    from edge.backends.engine_check import EngineMismatchError
    from edge.manifest import ManifestError
    from edge.method.inspection import FrameJudge
    from edge.sources.cameras import Frame

    try:
        backend = open_backend(model)
    except EngineMismatchError as exc:
        return Check(name, FAIL, str(exc), "build the engine on this device: riad-trainer build-engine MODEL.onnx")
    except ManifestError as exc:
        return Check(name, FAIL, str(exc), "use the model file together with the manifest it was exported with")
    except BackendError as exc:  # the runtime it needs is missing here (see the gpu line)
        return Check(name, FAIL, str(exc), "set up the GPU path (docs/gpu.md), or pass the .onnx model to use the CPU")
    with backend:
        m = backend.manifest
        try:
            # Without a camera, through the ROI the model was trained on, as calibrate scores.
            settings = (camera.threshold, camera.roi, camera.ignore) if camera else (None, m.crop)
            judge = FrameJudge(backend, *settings)
        except ManifestError as exc:  # trained on another ROI than the camera's
            return Check(name, FAIL, str(exc), "give the camera the roi the model was trained with, or train one for it")
        roi, ignore = judge.roi, judge.ignore
        if frame is None:  # a grey frame the camera's roi and ignore mask fit
            if ignore is not None and ignore.image is not None:
                size = ignore.image.shape
            else:
                size = (roi.y + roi.height, roi.x + roi.width) if roi else m.input_shape
            frame = np.full((*size, 3), 128, np.uint8)
            what = "a grey test frame"
        else:
            what = "a camera frame"
        started = time.perf_counter()
        try:
            score = judge.judge(Frame(0, time.time(), time.monotonic(), frame)).score
        except Exception as exc:  # noqa: BLE001 - any failure to score is this check's answer
            fix = "set the camera's roi inside its frames" if roi else "re-export the model with 'riad-trainer export'"
            return Check(name, FAIL, f"{model} loaded but could not score a frame: {exc}", fix)
        took = (time.perf_counter() - started) * 1000
    return Check(name, OK, f"{m.model_id} ({m.input_width}x{m.input_height} px, threshold {judge.threshold:.4f}) on {backend.name}: "
                 f"{what} scored {score:.4f} in {took:.0f} ms")


def check_broker(url: str, username: str | None, password: str | None, tls_ca: Path | None = None,
                 timeout: float = BROKER_TIMEOUT_S) -> Check:
    """Connects and logs in as run would, then disconnects without publishing anything."""
    from edge.sinks.broker import (
        BrokerError,
        BrokerSilent,
        BrokerTlsFailed,
        BrokerUnreachable,
        connect_client,
        parse_broker_url,
    )

    try:
        config = parse_broker_url(url, username, password, tls_ca)
    except BrokerError as exc:
        return Check("broker", FAIL, str(exc), "fix --broker (mqtt://host[:port] or mqtts://host[:port])")
    try:
        client = connect_client(config, timeout)
    except BrokerTlsFailed as exc:
        return Check("broker", FAIL, str(exc), "check the broker's certificate and --tls-ca")
    except BrokerUnreachable as exc:
        return Check("broker", FAIL, str(exc),
                     "check the host and port, that the broker runs, and firewalls; run still starts and spools events")
    except BrokerSilent as exc:
        return Check("broker", FAIL, str(exc), "is this port an MQTT listener (mqtts:// for a TLS port)?")
    except BrokerError as exc:  # refused
        return Check("broker", FAIL, str(exc),
                     "check --username/--password (RIAD_MQTT_PASSWORD) against the broker's password file")
    client.disconnect()
    client.loop_stop()
    who = f" as {config.username}" if config.username else " (anonymous)"
    return Check("broker", OK, f"{config.url}: logged in{who}")


def check_spool(folder: Path, warn_below: int = SPOOL_WARN_BYTES) -> Check:
    """Can undelivered events be written there, and is there room for an outage's worth?"""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return Check("spool", FAIL, f"{existing} is not writable by this user",
                     f"create {folder} owned by the user that runs riad-edge, or pass --spool-dir")
    free = shutil.disk_usage(existing).free
    detail = f"{folder}: {free / (1 << 30):.1f} GiB free"
    if free < warn_below:
        return Check("spool", WARN, detail, "free some space or move the spool to a bigger disk (--spool)")
    return Check("spool", OK, detail)


def run_checks(source: str | None, model: Path | None, broker: str | None, username: str | None,
               password: str | None, tls_ca: Path | None, spool_dir: Path | None) -> list[Check]:
    """The GPU always, the rest for what is given: `--model X` alone checks just the GPU and X."""
    checks = []
    frame = None
    if source is not None:
        check, frame = check_source(source)
        checks.append(check)
    checks.append(check_gpu(model))
    if model is not None:
        checks.append(check_model(model, frame))
    if broker is not None:
        checks.append(check_broker(broker, username, password, tls_ca))
    if spool_dir is not None:
        checks.append(check_spool(spool_dir))
    return checks


def station_checks(config: StationConfig, broker: str | None, username: str | None, password: str | None,
                   tls_ca: Path | None) -> list[Check]:
    """Every camera of a station config as `run --config` would start it: its source, and its
    model through its ROI; the GPU once; the broker (`broker` wins over the file's, as in run);
    each folder the cameras' spools are in."""
    from edge.backends import ENGINE_SUFFIXES
    from edge.sinks.spool import default_spool_path

    checks = []
    for camera in config.cameras:
        check, frame = check_source(camera.source)
        check.name = f"source {camera.camera_id}"
        checks += [check, check_model(camera.model, frame, camera, f"model {camera.camera_id}")]
    engines = [c.model for c in config.cameras if c.model.suffix.lower() in ENGINE_SUFFIXES]
    checks.insert(0, check_gpu((engines or [config.cameras[0].model])[0]))
    broker = broker or config.broker
    if broker is not None:
        checks.append(check_broker(broker, username, password, tls_ca))
        folders = dict.fromkeys((c.spool or default_spool_path(c.camera_id)).parent for c in config.cameras)
        checks += [check_spool(folder) for folder in folders]
    return checks


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status:<4}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<{width}}        fix: {c.fix}")
    return "\n".join(lines)
