"""The manifest: everything the edge needs to know about a model, written beside it.

`bottle.onnx` has its manifest in `bottle.onnx.json`, a TensorRT engine `bottle.plan`
in `bottle.plan.json`. The trainer writes it at export, `build-engine` copies it and
adds the engine's facts, and `riad-edge` refuses a model whose file no longer matches
the hash its manifest recorded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from edge.method.anomaly_map import MapSpec, score_margin, scored_part, usable_gms_constant, usable_top_fraction
from edge.method.masks import MaskSpec, check_input_size
from edge.method.preprocess import FULL_SCALE_16, prepare
from edge.method.roi import Roi
from edge.paths import replaced_when_done

# Version 2: the map may be per channel (map_channels) and has a reference map to subtract
# (reference_map). Version 3: the image score may be the mean of the map's highest pixels
# (score_top_fraction). An older riad-edge skips keys it does not know, so it would score
# such a model differently from the threshold export set; it refuses the newer version
# instead. Version 4: the image score may count the map's rise above the good maps'
# per-pixel maximum (score_reference_map). Version 5: the image score may weigh the map by
# how little good maps vary at each pixel (score_weight_map). Version 6: a 16-bit frame's
# white may be below 65535 (pixel_white). Older manifests still load here: without those
# keys they mean the paper's map and score, and 16-bit frames at full scale.
FORMAT_VERSION = 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
MAP_CHANNELS = ("grey", "rgb")  # Manifest.map_channels


class ManifestError(Exception):
    """A model file and its manifest do not belong together, or the manifest is unusable."""


def manifest_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    """The network takes RGB / 255 in [0, 1] with hidden cells 0, as it was trained; nothing else."""

    model_id: str
    category: str
    # The network's input, in the aspect ratio of the training images (trainer.data.input_shape).
    input_height: int
    input_width: int
    model_width: int
    threshold: float
    model_file: str  # file name, relative to the manifest's folder
    model_sha256: str
    cell_sizes: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    num_sets: int = 3
    mask_seed: int = 0
    map_levels: int = 4
    map_c: float = 0.0026
    map_sigma: float = 4.0
    # What the map's gradients are taken on (MapSpec.per_channel): "grey", the channel mean
    # as in the paper (manifests from before the field), or "rgb", each channel, averaged.
    map_channels: str = "grey"
    # The image score (edge.method.anomaly_map.image_score): the mean of the map's highest
    # this fraction of pixels; None, the map's maximum (the paper's, and manifests before it).
    score_top_fraction: float | None = None
    # The value a 16-bit frame reads as white (edge.method.preprocess.to_rgb8): that of the
    # training images, 4095 for a 12-bit camera's 16-bit files; 65535 for 8-bit ones and before it.
    pixel_white: int = FULL_SCALE_16
    # fp32, or int8 (quantised for ONNX Runtime on a CPU; see trainer/quantize.py).
    precision: str = "fp32"
    input_name: str = "images"
    output_name: str = "reconstructions"
    training_fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    # Filled by build-engine for a TensorRT engine: tensorrt_version, gpu_name,
    # compute_capability, precision, source_onnx_sha256, max_batch.
    engine: dict = field(default_factory=dict)
    # Filled by build-engine beside the engine: the CUDA kernels compiled for this GPU
    # (edge/backends/kernel_binary.py): file, sha256, arch, compiler, source_sha256. Empty before.
    kernels: dict = field(default_factory=dict)
    # The crop the model was trained on (riad-trainer train --roi): x, y, width, height,
    # rotate; empty for whole frames. One camera's `run` crops its frames to it; a station
    # camera states its roi, and the edge refuses a camera with another one.
    roi: dict = field(default_factory=dict)
    # What a defect-free part's anomaly map looks like (edge.method.anomaly_map.excess_over_reference),
    # measured at export: height, width, float16_base64, at 1/REFERENCE_SCALE of the input
    # (it is a smoothed map). Empty in manifests from before it: the paper's plain map.
    reference_map: dict = field(default_factory=dict)
    # What the image score rises above (edge.method.anomaly_map.score_margin): the per-pixel
    # maximum of the same good maps, stored as reference_map is. Empty: the score counts the
    # shown map itself (manifests before it, and export --score-reference mean).
    score_reference_map: dict = field(default_factory=dict)
    # How much of the map the image score counts at each pixel, in (0, 1]
    # (edge.method.anomaly_map.score_weight), stored as reference_map is. Empty: all of it
    # (manifests before it, and export --score-reference mean or max).
    score_weight_map: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the network input, as edge.method.preprocess.prepare takes it."""
        return self.input_height, self.input_width

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """A frame (or its ROI view) as this model's network takes it (edge.method.preprocess.prepare)."""
        return prepare(frame, self.input_shape, self.pixel_white)

    @property
    def crop(self) -> Roi | None:
        """The ROI the model was trained on (`roi`), or None for whole frames."""
        return Roi.from_dict(self.roi) if self.roi else None

    @property
    def mask_spec(self) -> MaskSpec:
        return MaskSpec(tuple(self.cell_sizes), self.num_sets)

    @property
    def map_spec(self) -> MapSpec:
        return MapSpec(self.map_levels, self.map_c, self.map_sigma, per_channel=self.map_channels == "rgb")

    @cached_property
    def reference(self) -> np.ndarray | None:
        """The reference map at the input size, (H, W) float32, or None; CPU and GPU subtract this same array."""
        return decode_reference(self.reference_map, self.input_shape)

    @cached_property
    def score_margin(self) -> np.ndarray | None:
        """(H, W) float32 or None: how far above the reference a map must rise before the
        image score counts it (edge.method.anomaly_map.scored_part); CPU and GPU use this array."""
        score_reference = decode_reference(self.score_reference_map, self.input_shape, "score_reference_map")
        return score_margin(self.reference, score_reference)

    @cached_property
    def score_weight(self) -> np.ndarray | None:
        """(H, W) float32 in (0, 1] or None: the share of the map the image score counts at
        each pixel (edge.method.anomaly_map.scored_part); CPU and GPU use this array."""
        weight = decode_reference(self.score_weight_map, self.input_shape, "score_weight_map")
        if weight is not None and not (weight.min() > 0 and weight.max() <= 1):
            # A weight above 1 would count more than the map shown: boxes and colours read the two together.
            raise ValueError(f"score_weight_map holds values from {weight.min():.3g} to {weight.max():.3g}, not within (0, 1]")
        return weight

    def counted_part(self, amap: np.ndarray) -> np.ndarray:
        """The part of a shown map (H, W) this model's image score counts, with its margin and
        weight (edge.method.anomaly_map.scored_part); `amap` itself where it counts all of it."""
        return scored_part(amap, self.score_margin, self.score_weight)

    @property
    def score_reference(self) -> str:
        """What the image score counts of the map shown (export's --score-reference): "mean", "max" or "spread"."""
        if self.score_weight_map:
            return "spread"
        return "max" if self.score_reference_map else "mean"

    def save(self, path: str | Path) -> Path:
        """Write the manifest whole or not at all: `riad-edge calibrate` rewrites a working
        model's manifest in place, and a kill or a full disk mid-write must leave the old one."""
        path = Path(path)
        with replaced_when_done(path) as partial:
            partial.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Parse a manifest file without checking the model file it names."""
        path = Path(path)
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            engine = path.name.endswith((".plan.json", ".engine.json"))
            make = "build the engine with 'riad-trainer build-engine'" if engine else "export the model with 'riad-trainer export'"
            raise ManifestError(f"no manifest at {path}; {make}, which writes it beside the model") from None
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"manifest {path} is not a JSON object")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            *earlier, last = map(str, READABLE_VERSIONS)
            readable = f"{', '.join(earlier)} and {last}" if earlier else last
            raise ManifestError(
                f"manifest {path} has format version {version}; this riad-edge reads versions {readable}: "
                "upgrade riad-edge to the riad-trainer's version, or export the model again with this one"
            )
        if "input_size" in data:  # written before inputs could be non-square: a square
            data.setdefault("input_height", data["input_size"])
            data.setdefault("input_width", data["input_size"])
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ManifestError(f"manifest {path} lacks {', '.join(missing)}")
        threshold = data["threshold"]
        # NaN is never exceeded: a model with it would run and never raise an alert.
        if not _finite_number(threshold):
            raise ManifestError(f"manifest {path}: threshold {threshold!r} is not a finite number; re-export the model")
        try:
            # Unknown keys are skipped: older exports wrote mean/std, which were always 0 and 1.
            manifest = cls(**{k: v for k, v in data.items() if k in known})
            # Checked on the manifest, so keys an older export left out are judged by their defaults.
            if manifest.map_channels not in MAP_CHANNELS:
                raise ManifestError(
                    f"manifest {path}: map_channels {manifest.map_channels!r} is none of {', '.join(MAP_CHANNELS)}; "
                    "it comes from a newer riad-trainer than this riad-edge, or was edited"
                )
            sizes, sets = manifest.cell_sizes, manifest.num_sets
            whole_sizes = isinstance(sizes, list) and sizes and all(_whole_number(k, least=1) for k in sizes)
            if not (whole_sizes and _whole_number(sets, least=1)):
                raise ManifestError(
                    f"manifest {path}: cell_sizes {sizes!r} and num_sets {sets!r} must be whole numbers above 0 "
                    "(cell_sizes a list of them); re-export the model"
                )
            c = manifest.map_c  # the map divides by it (edge.method.anomaly_map.gms_constant)
            if not usable_gms_constant(c):
                raise ManifestError(f"manifest {path}: map_c {c!r} must be a number above 0; re-export the model")
            fraction = manifest.score_top_fraction
            if not usable_top_fraction(fraction):
                raise ManifestError(
                    f"manifest {path}: score_top_fraction {fraction!r} must be above 0 and at most 1, or null "
                    "for the map's maximum; re-export the model"
                )
            white = manifest.pixel_white
            if not (_whole_number(white, least=255) and white <= FULL_SCALE_16):
                raise ManifestError(f"manifest {path}: pixel_white {white!r} must be a whole number from 255 to 65535; re-export the model")
            seed = manifest.mask_seed
            if not _whole_number(seed, least=0):  # numpy's generators take seeds of 0 and up
                raise ManifestError(f"manifest {path}: mask_seed {seed!r} must be a whole number, 0 or more; re-export the model")
            check_input_size(manifest.input_height, manifest.input_width, manifest.mask_spec)
            manifest.reference  # decoded now: a damaged one is named at start, not at the first frame
            manifest.score_margin  # ... and the score's
            manifest.score_weight
            return manifest
        except TypeError as exc:
            raise ManifestError(f"manifest {path} is malformed: {exc}") from None
        except ValueError as exc:
            raise ManifestError(f"manifest {path}: {exc}; re-export the model") from None

    @classmethod
    def for_model(cls, model_path: str | Path) -> Manifest:
        """The manifest of a model file, checked to describe exactly that file."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ManifestError(f"model file {model_path} does not exist")
        manifest = cls.read(manifest_path(model_path))
        actual = file_sha256(model_path)
        if actual != manifest.model_sha256:
            raise ManifestError(
                f"{model_path} does not match its manifest (sha256 {actual[:12]}..., manifest says "
                f"{manifest.model_sha256[:12]}...); re-export or rebuild the model with its manifest"
            )
        return manifest


REFERENCE_SCALE = 4  # the reference is a smoothed map (sigma >= 4 px at 256 px): 1/4 of the size keeps it


def _whole_number(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _finite_number(value) -> bool:
    """A JSON number that is not NaN or infinite (and not true or false, which Python counts as ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def encode_reference(reference: np.ndarray) -> dict:
    """The manifest's `reference_map` for an (H, W) map: float16 at 1/REFERENCE_SCALE of the size."""
    height, width = reference.shape
    small = cv2.resize(reference.astype(np.float32), (max(1, width // REFERENCE_SCALE), max(1, height // REFERENCE_SCALE)),
                       interpolation=cv2.INTER_AREA).astype(np.float16)  # fmt: skip
    return {"height": small.shape[0], "width": small.shape[1], "float16_base64": base64.b64encode(small.tobytes()).decode("ascii")}


def decode_reference(stored: dict, shape: tuple[int, int], name: str = "reference_map") -> np.ndarray | None:
    """`stored` (encode_reference's) back at `shape` (H, W), bilinear; None when there is none."""
    if not stored:
        return None
    try:
        height, width = int(stored["height"]), int(stored["width"])
        small = np.frombuffer(base64.b64decode(stored["float16_base64"], validate=True), np.float16)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ValueError(f"{name} is damaged ({exc})") from None
    if height < 1 or width < 1 or small.size != height * width or not np.isfinite(small).all():
        raise ValueError(f"{name} is damaged ({small.size} values for {height} x {width})")
    return cv2.resize(small.reshape(height, width).astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
