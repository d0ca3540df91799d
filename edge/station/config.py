"""The station's config file (`riad-edge run --config line.yaml`): the cameras of one box.

    broker: mqtt://broker.local        # optional; --broker overrides it
    topic_prefix: riad                 # optional
    metrics_port: 9108                 # optional: /metrics and /healthz for all cameras (docs/monitoring.md)
    metrics_host: 127.0.0.1            # optional; 0.0.0.0 for a Prometheus on another machine
    health_grace_s: 60                 # optional: /healthz fails after this long without frames or broker
    cameras:
      - id: line1                      # the <camera> level of the MQTT topics
        source: rtsp://cam1/stream     # any source URI `run --source` takes
        model: engines/bottle.onnx     # cameras naming the same model share one backend
        mode: triggered                # free (default) or triggered
        threshold: 0.2                 # optional; default: the model manifest's
        deadline_ms: 1000              # triggered: a verdict later than this is an error
        spool: /var/lib/riad/line1.spool   # optional
        roi: 120,40,600,600,90         # optional crop x,y,width,height[,rotation]; the model must be trained on it
        ignore_mask: masks/line1.png   # optional, frame-sized image: non-zero pixels never alarm
        ignore_polygons: [[[0, 0], [200, 0], [200, 80], [0, 80]]]   # or polygons, in frame pixels

Relative paths (model, spool, a file source) are relative to the config file. Unknown
keys are errors: a misspelt `treshold` must not silently run with the default; so is a
key given twice (YAML would keep the last). Ids, sources and paths are read as written:
`id: 01` is camera 01, not the number 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from edge.method.roi import IgnoreMask, Roi, RoiError
from edge.sinks.spool import default_spool_path
from edge.station.triggered import DEFAULT_DEADLINE_S

MODES = ("free", "triggered")
_CAMERA_KEYS = {"id", "source", "model", "mode", "threshold", "deadline_ms", "spool", "roi", "ignore_mask", "ignore_polygons"}
_STATION_KEYS = {"broker", "topic_prefix", "cameras", "metrics_port", "metrics_host", "health_grace_s"}


class ConfigError(Exception):
    """The config file cannot be read or describes no valid station."""


@dataclass
class CameraConfig:
    camera_id: str | None  # None: named after its source (cam0, the file name...), as `run` does
    source: str
    model: Path
    mode: str = "free"
    threshold: float | None = None
    deadline_s: float = DEFAULT_DEADLINE_S
    spool: Path | None = None
    roi: Roi | None = None
    ignore: IgnoreMask | None = None
    roi_from_model: bool = False  # one camera from run's flags: crop as the model was trained (its manifest's roi)


@dataclass
class StationConfig:
    cameras: list[CameraConfig]
    broker: str | None = None
    topic_prefix: str = "riad"
    metrics_port: int | None = None  # None: no /metrics, /healthz
    metrics_host: str | None = None
    health_grace_s: float | None = None


# Keys whose values are names or paths: kept as written. YAML would read `id: 01` as the
# number 1 (topics riad/1/... where the user wrote 01), `id: no` as False, `model: 2024.10`
# as a float that is no path.
_TEXT_KEYS = {"id", "source", "model", "spool", "ignore_mask", "broker", "topic_prefix", "metrics_host"}


class _StationLoader(yaml.SafeLoader):
    """YAML's safe loader with two changes for a config people type by hand.

    A key given twice is an error: YAML keeps the last, so a second `cameras:` pasted below
    the first would silently stop every camera of the first. And the values of _TEXT_KEYS
    are the text as written (an empty one stays None: missing).
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # a list as a key: SafeLoader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
            plain_scalar = isinstance(value_node, yaml.ScalarNode) and value_node.style is None
            if key in _TEXT_KEYS and plain_scalar and value_node.tag != "tag:yaml.org,2002:null":
                value_node.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep)


def load_config(path: Path) -> StationConfig:
    try:
        with open(path, encoding="utf-8") as stream:  # a stream: YAML's errors name the file
            data = yaml.load(stream, Loader=_StationLoader)  # noqa: S506 - a SafeLoader
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping with a 'cameras' list")
    _no_unknown(data, _STATION_KEYS, f"config {path}")
    cameras = data.get("cameras")
    if not isinstance(cameras, list) or not cameras:
        raise ConfigError(f"config {path} lists no cameras (a 'cameras:' list of mappings)")
    base = Path(path).resolve().parent
    parsed = [_camera(c, i, base) for i, c in enumerate(cameras)]
    ids = [c.camera_id or "" for c in parsed]  # every camera of a file has its id
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"config {path}: camera id(s) {', '.join(duplicates)} appear more than once")
    _one_spool_per_camera(parsed, f"config {path}")
    broker = data.get("broker")
    if broker is not None and not isinstance(broker, str):
        raise ConfigError(f"config {path}: broker must be a URL like mqtt://host")
    prefix = data.get("topic_prefix", "riad")
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "+#"):
        raise ConfigError(f"config {path}: topic_prefix must be a topic without wildcards, not {prefix!r}")
    return StationConfig(parsed, broker, prefix, *_monitoring(data, f"config {path}"))


def _one_spool_per_camera(cameras: list[CameraConfig], where: str) -> None:
    """A spool is one camera's queue and one user's lock: two cameras on one file would leave
    the second down with "in use by another process", though it is this process."""
    owners: dict[Path, str] = {}
    for camera in cameras:
        spool = (camera.spool or default_spool_path(camera.camera_id)).resolve()
        if spool in owners:
            raise ConfigError(f"{where}: cameras {owners[spool]} and {camera.camera_id} share spool {spool}; give each camera its own")
        owners[spool] = camera.camera_id


def _monitoring(data: dict, where: str) -> tuple[int | None, str | None, float | None]:
    port, host, grace = data.get("metrics_port"), data.get("metrics_host"), data.get("health_grace_s")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
        raise ConfigError(f"{where}: metrics_port must be a port number 1 to 65535, not {port!r}")
    if host is not None and (not isinstance(host, str) or not host):
        raise ConfigError(f"{where}: metrics_host must be an address like 127.0.0.1 or 0.0.0.0, not {host!r}")
    if grace is not None and (not _finite(grace) or grace <= 0):
        raise ConfigError(f"{where}: health_grace_s must be a positive number of seconds, not {grace!r}")
    return port, host, None if grace is None else float(grace)


def _no_unknown(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(known))})")


def _camera(data, index: int, base: Path) -> CameraConfig:
    where = f"camera {index + 1}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping (id, source, model...)")
    where = f"camera {index + 1 if data.get('id') is None else data['id']}"
    _no_unknown(data, _CAMERA_KEYS, where)
    for key in ("id", "source", "model"):
        if data.get(key) is None:
            raise ConfigError(f"{where} lacks '{key}'")
    for key in sorted(_TEXT_KEYS & _CAMERA_KEYS):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key} must be a name or path, not {data[key]!r}")
    camera_id = str(data["id"])
    if not camera_id or any(c in camera_id for c in "/+#"):
        raise ConfigError(f"{where}: id must be non-empty and contain no '/', '+' or '#'")
    mode = data.get("mode", "free")
    if mode not in MODES:
        raise ConfigError(f"{where}: mode must be one of {', '.join(MODES)}, not {mode!r}")
    threshold = data.get("threshold")
    if threshold is not None and not _finite(threshold):
        raise ConfigError(f"{where}: threshold must be a finite number, not {threshold!r}")
    deadline_ms = data.get("deadline_ms", DEFAULT_DEADLINE_S * 1000)
    if not _finite(deadline_ms) or deadline_ms <= 0:
        raise ConfigError(f"{where}: deadline_ms must be a positive number, not {deadline_ms!r}")
    spool = data.get("spool")
    try:
        roi = data.get("roi")
        roi = Roi.parse(str(roi)) if isinstance(roi, (str, int)) else None if roi is None else Roi.from_dict(roi)
        if "ignore_mask" in data and "ignore_polygons" in data:
            raise RoiError("give ignore_mask or ignore_polygons, not both")
        ignore = None
        if "ignore_mask" in data:
            ignore = IgnoreMask.from_file(base / Path(data["ignore_mask"]))
        elif "ignore_polygons" in data:
            ignore = IgnoreMask(polygons=data["ignore_polygons"])
    except RoiError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return CameraConfig(
        camera_id=camera_id,
        source=_source(str(data["source"]), base),
        model=base / Path(data["model"]),
        mode=mode,
        threshold=None if threshold is None else float(threshold),
        deadline_s=float(deadline_ms) / 1000.0,
        spool=None if spool is None else base / Path(spool),
        roi=roi,
        ignore=ignore,
    )


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def _source(uri: str, base: Path) -> str:
    """A relative file or folder is relative to the config file; URIs and camera numbers stay as they are."""
    if "://" in uri or uri.isdigit() or Path(uri).is_absolute():
        return uri
    return str(base / uri)
