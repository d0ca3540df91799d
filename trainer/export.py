"""Checkpoint -> ONNX model + manifest, checked against torch and calibrated.

The ONNX file is what every edge backend loads (ONNX Runtime directly, TensorRT after
`build-engine`). Export proves the file computes what the trained net computes, then
scores the held-out good images with the edge's own CPU backend to set the threshold,
so the threshold is measured on exactly the arithmetic the edge box will run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edge.method.anomaly_map import (
    GMS_C,
    DEFAULT_SCORE_REFERENCE,
    SCORE_REFERENCES,
    SCORE_TOP_FRACTION,
    MapSpec,
    default_sigma,
    gms_constant,
    map_channels_for,
    score_weight,
    usable_gms_constant,
    usable_top_fraction,
)
from edge.backends.base import Backend
from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, encode_reference, file_sha256, manifest_path
from edge.method.masks import MaskSpec, fixed_masks, masked_variants
from edge.method.preprocess import FULL_SCALE_16
from edge.method.roi import Roi
from edge.method.threshold import check_false_alarm_rate
from edge.paths import make_folder, replaced_when_done
from trainer.calibrate import calibrate_threshold
from trainer.data import load_images
from trainer.quantize import CALIBRATION_IMAGES, quantize_int8
from trainer.train import TrainConfig, build_model, load_checkpoint

# Opset 17 rather than the newest: the TensorRT parsers of older JetPacks lag behind ONNX.
# The torch.export-based exporter starts at 18 and down-converts cleanly.
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "reconstructions"
# float32 reorderings differ by ~1e-7; beyond 1e-4 the graph computes something else.
MAX_ABS_DIFF = 1e-4
# INT8 rounds every activation to 1/256 of its range; a few hundredths on a pixel in
# [0, 1] is that rounding accumulated, and now and then one pixel in a million lands
# further (0.12 measured on a 208 x 512 KolektorSDD model whose other pixels stayed within
# 0.03). A quantised net that has gone wrong moves many pixels: beyond 0.1 for one pixel
# in a thousand, or 0.5 for any, it is refused.
MAX_ABS_DIFF_INT8 = 0.1  # for all but one pixel in a thousand
MAX_ABS_DIFF_INT8_ANY = 0.5


class ExportError(Exception):
    """The checkpoint cannot become a trustworthy edge model."""


@contextlib.contextmanager
def quiet_exporter():
    """The exporter narrates each pass, warns about torch internals and about building
    opset 18 then converting it down; a user exporting a model needs none of it."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(model: torch.nn.Module, example: torch.Tensor, out_path: Path) -> None:
    """One self-contained .onnx file (weights inside, so the manifest's hash covers them)
    with a dynamic batch axis: the CPU backend sends 12 variants, TensorRT may batch more.

    Uses the torch.export-based exporter (torch's default since 2.9): its graph is clean
    (batch norm folded, static Resize scales, no shape arithmetic), which TensorRT likes.
    """
    with quiet_exporter():
        torch.onnx.export(
            model,
            (example,),
            str(out_path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
        )


def onnx_abs_diff(model: torch.nn.Module, onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    """|ONNX output - torch output| for every value of the batch's reconstructions."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    with torch.no_grad():
        torch_out = model(torch.from_numpy(batch)).numpy()
    return np.abs(onnx_out - torch_out)


def diff_problem(diff: np.ndarray, limit: float, any_limit: float | None = None) -> str | None:
    """Why these differences from torch mean another net, or None. Without `any_limit` every
    value must stay within `limit`; with it, all but one in a thousand (rounding's rare
    outliers), and every one within `any_limit`."""
    largest = float(diff.max())
    if any_limit is None:
        return None if largest <= limit else f"by {largest:.2e} (limit {limit:.0e})"
    bulk = float(np.quantile(diff, 0.999))
    if not bulk <= limit:
        return f"by {bulk:.2e} or more on one value in a thousand (limit {limit:.0e})"
    if not largest <= any_limit:
        return f"by {largest:.2e} (limit {any_limit:.0e})"
    return None


def check_against_torch(
    model: torch.nn.Module, onnx_path: Path, variants: np.ndarray, limit: float, any_limit: float | None = None
) -> float:
    """The ONNX file's largest difference from torch on one frame's variants (diff_problem's
    limits); deletes a bad file."""
    diff = onnx_abs_diff(model, onnx_path, variants)
    problem = diff_problem(diff, limit, any_limit)
    if problem is not None:
        onnx_path.unlink()
        raise ExportError(f"the ONNX model differs from the torch model {problem}; nothing was written")
    return float(diff.max())


# More draws only average away more of one draw's luck (five, 60 variants a frame, gave
# KolektorSDD 2.3 points: docs/benchmarks.md); the cap stops a typo's 80 from making every
# frame 80 times the work.
MAX_MASK_DRAWS = 8
REFERENCE_IMAGES = 64  # training images the reference map is measured on: the mean's noise is already small at 40
# How the reference map sums up those images' maps, per pixel: their mean (the default) or
# their maximum. The maximum ranks parts a little better but blanks most of a defect's map
# and makes the threshold from held-out images flag many new good parts (docs/benchmarks.md).
REFERENCE_STATISTICS = ("mean", "max")


def spread(paths: list[str], count: int) -> list[Path]:
    """At most `count` of `paths`, evenly spaced, so every part of a sorted folder is in it."""
    step = max(1, len(paths) / count) if paths else 1
    return [Path(paths[int(i * step)]) for i in range(min(count, len(paths)))]


def reference_anomaly_maps(backend: Backend, images: np.ndarray) -> dict[str, np.ndarray]:
    """map_statistics of the images' anomaly maps, as the backend's manifest has them (no reference)."""
    return map_statistics(np.stack([backend.score(image).anomaly_map for image in images]))  # 64 maps of ~25,000 pixels


def map_statistics(maps: np.ndarray) -> dict[str, np.ndarray]:
    """{"mean": ..., "max": ..., "std": ...}: (H, W) float32, the per-pixel mean, maximum and
    standard deviation of good images' anomaly maps (N, H, W)."""
    return {"mean": maps.mean(axis=0, dtype=np.float64).astype(np.float32), "max": maps.max(axis=0),
            "std": maps.std(axis=0, dtype=np.float64).astype(np.float32)}


def with_reference_maps(manifest: Manifest, statistics: dict[str, np.ndarray], reference_statistic: str,
                        score_reference: str) -> Manifest:
    """The manifest with its reference map (the good maps' `reference_statistic`) and what the
    image score counts of the map shown (`score_reference`, export's --score-reference)."""
    manifest = replace(manifest, reference_map=encode_reference(statistics[reference_statistic]))
    # Only the maximum above a map shown as the rise above the mean counts less than the map
    # shown; with the maximum as the map's own reference the map is what the score counts.
    if score_reference == "max" and reference_statistic == "mean":
        manifest = replace(manifest, score_reference_map=encode_reference(statistics["max"]))
    if score_reference == "spread":
        manifest = replace(manifest, score_weight_map=encode_reference(score_weight(statistics["std"])))
    return manifest


def parse_cell_sizes(text: str) -> tuple[int, ...]:
    """--cell-sizes "4,8,16" as (4, 8, 16); what is not a comma-separated list of numbers is refused."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdecimal() for part in parts):  # isdigit() would pass "²", which int() refuses
        raise ExportError(f"--cell-sizes takes whole numbers separated by commas, e.g. 4,8,16, not {text!r}")
    return tuple(int(part) for part in parts)


def inference_cell_sizes(config: TrainConfig, chosen: tuple[int, ...] | None) -> tuple[int, ...]:
    """The cell sizes the edge masks with: all the model was trained with (the method), or
    `chosen` of them, in ascending order. Dropping the 2 px cells, which a net fills in
    from their neighbours whatever lies there, cuts a frame from 12 variants to 9
    (docs/benchmarks.md measures what it costs). A size the net never inpainted is refused."""
    if chosen is None:
        return tuple(config.cell_sizes)
    unknown = sorted(set(chosen) - set(config.cell_sizes))
    if not chosen or unknown:
        raise ExportError(
            f"cell sizes must be some of those the model was trained with ({', '.join(map(str, config.cell_sizes))})"
            + (f", not {', '.join(map(str, unknown))}" if unknown else "; none were given")
        )
    return tuple(sorted(set(chosen)))


def export_onnx(
    checkpoint: str | Path, out_path: str | Path, int8: bool = False, false_alarm_rate: float | None = None,
    reference_map: bool = True, cell_sizes: tuple[int, ...] | None = None, mask_draws: int = 1,
    mask_seed: int | None = None, reference_statistic: str = "mean", map_c: float | None = None,
    score_top_fraction: float | None = SCORE_TOP_FRACTION, score_reference: str | None = None,
) -> Manifest:
    """Write `out_path` (.onnx) and its manifest beside it; return the manifest.

    With `int8` the file is the INT8 model for CPU edge boxes (trainer/quantize.py),
    checked against torch like the float one and calibrated on its own scores.
    With `false_alarm_rate` the threshold targets that rate (trainer/calibrate.py);
    the manifest's metrics["calibration"] records the rule used either way.
    With `reference_map` (the default) the manifest carries the mean (or with
    `reference_statistic` "max", the per-pixel maximum) of the anomaly maps of up to
    REFERENCE_IMAGES training images, which the edge subtracts
    (edge.method.anomaly_map.excess_over_reference).
    With `cell_sizes` (some of those the model was trained with) the edge masks with those
    alone: fewer variants a frame, for speed (inference_cell_sizes). With `mask_draws` N the
    edge masks every size N times, each a fresh draw of its cells, and averages the maps:
    N times the variants, less of the draw's luck in the score (docs/benchmarks.md).
    With `mask_seed` the edge's cells are drawn from that seed instead of the training
    seed: another draw of the same model, which on fine defects scores differently.
    The map's GMS constant is measured on the held-out good images
    (edge.method.anomaly_map.gms_constant), or with `map_c` set to it (0.0026: the paper's).
    The image score is the mean of the map's highest `score_top_fraction` of pixels, or
    with None its maximum (the paper's; edge.method.anomaly_map.image_score), of the map
    itself (`score_reference` "mean"), of its rise above the reference images' per-pixel
    maximum ("max": edge.method.anomaly_map.score_margin; the same as the map itself with
    the maximum as the map's reference), or of the map weighted down where the reference
    images' maps vary ("spread": edge.method.anomaly_map.score_weight); None: "spread"
    (DEFAULT_SCORE_REFERENCE), or "mean" without a reference map, as there are no good
    maps measured to weigh by.
    """
    checkpoint, out_path = Path(checkpoint), Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise ExportError(f"{out_path} does not end in .onnx; name the model file, e.g. engines/bottle.onnx")
    if false_alarm_rate is not None:
        try:
            check_false_alarm_rate(false_alarm_rate)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    if not 1 <= mask_draws <= MAX_MASK_DRAWS:
        raise ExportError(f"mask draws must be 1 to {MAX_MASK_DRAWS}, not {mask_draws}")
    if reference_statistic not in REFERENCE_STATISTICS:
        raise ExportError(f"--reference-statistic must be one of {', '.join(REFERENCE_STATISTICS)}, not {reference_statistic!r}")
    if score_reference is None:
        score_reference = DEFAULT_SCORE_REFERENCE if reference_map else "mean"
    if score_reference not in SCORE_REFERENCES:
        raise ExportError(f"--score-reference must be one of {', '.join(SCORE_REFERENCES)}, not {score_reference!r}")
    if score_reference != "mean" and not reference_map:  # both are measured on the same good images' maps
        raise ExportError(f"--score-reference {score_reference} needs the reference map; leave out --no-reference-map")
    if map_c is not None and not usable_gms_constant(map_c):
        raise ExportError(f"--map-c must be a number above 0 (the paper's is {GMS_C}), not {map_c}")
    if not usable_top_fraction(score_top_fraction):
        raise ExportError(f"the score's top fraction must be above 0 and at most 1 (0.01: the highest 1 % of the map), not {score_top_fraction}")
    if mask_seed is not None and mask_seed < 0:  # numpy's generators take seeds of 0 and up
        raise ExportError(f"the mask seed must be a whole number, 0 or more, not {mask_seed}")
    state = load_checkpoint(checkpoint)
    if state["epoch"] == 0:
        raise ExportError(f"{checkpoint} holds no completed epoch; train longer before exporting")
    config = TrainConfig.from_dict(state["config"])
    seed = config.seed if mask_seed is None else mask_seed
    # The masks of repeated sizes come from the seed's generator in turn, so each is
    # another draw; the map's mean over the reconstructions averages the draws' maps.
    spec = MaskSpec(inference_cell_sizes(config, cell_sizes) * mask_draws, config.num_sets)
    # Checkpoints from before non-square inputs were square.
    height, width = state.get("input_shape") or (config.input_size, config.input_size)
    white = state.get("pixel_white", FULL_SCALE_16)  # checkpoints from before it read 16-bit files at full scale

    def good_images(paths: list[Path]) -> np.ndarray:
        """Good images as training read them: its input shape, ROI and 16-bit white."""
        return load_images(paths, (height, width), config.roi, white)

    held_out = [Path(p) for p in state["held_out_images"]]
    reference_paths = spread(state["train_images"], REFERENCE_IMAGES) if reference_map else []
    missing = [str(p) for p in [*held_out, *reference_paths] if not p.is_file()]
    if missing:
        raise ExportError(
            f"the images that set the threshold and the reference map are gone ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); restore {state['data_root']} to export"
        )

    model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()

    # Decoded once, before any file is written, so a damaged one is named first. They set
    # the threshold; the first one's masked variants, the batch the edge really sends,
    # check the file against torch.
    held_out_images = good_images(held_out)
    map_channels = map_channels_for(held_out_images)
    if map_c is None:  # a scalar of the surface, measured on the good parts that also set the threshold
        map_c = gms_constant(held_out_images, MapSpec(per_channel=map_channels == "rgb"))
    masks = fixed_masks(height, width, spec, seed)
    variants = masked_variants(held_out_images[0], masks)
    make_folder(out_path.parent)
    # A re-export over a deployed model that fails its checks, or is stopped halfway, leaves
    # that model and its manifest as they were.
    with replaced_when_done(out_path) as partial:
        float_path = out_path.with_name(out_path.stem + ".float.tmp.onnx") if int8 else partial
        write_onnx(model, torch.from_numpy(variants[:2]), float_path)
        diff = check_against_torch(model, float_path, variants, MAX_ABS_DIFF)
        if int8:
            calibration_images = good_images([Path(p) for p in state["train_images"][:CALIBRATION_IMAGES]])
            try:
                quantize_int8(float_path, partial, calibration_images, masks, INPUT_NAME)
            finally:
                float_path.unlink()
            diff = check_against_torch(model, partial, variants, MAX_ABS_DIFF_INT8, MAX_ABS_DIFF_INT8_ANY)

        sha = file_sha256(partial)
        manifest = Manifest(
            model_id=f"{state['category']}-w{config.base_width}-{width}x{height}{'-int8' if int8 else ''}-{sha[:8]}",
            category=state["category"],
            input_height=height,
            input_width=width,
            model_width=config.base_width,
            precision="int8" if int8 else "fp32",
            threshold=float("nan"),  # set below, from this very file's scores
            model_file=out_path.name,
            model_sha256=sha,
            cell_sizes=list(spec.cell_sizes),
            num_sets=spec.num_sets,
            mask_seed=seed,
            map_sigma=default_sigma(height, width),
            map_c=map_c,
            map_channels=map_channels,
            score_top_fraction=score_top_fraction,
            pixel_white=white,
            roi=Roi.parse(config.roi).as_dict() if config.roi else {},
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            training_fingerprint=state["fingerprint"],
            recipe=config.to_dict(),
        )
        with OnnxCpuBackend(partial, manifest=manifest) as backend:
            # The reference comes from training images and the threshold from the held-out
            # ones, so the held-out scores are those of parts the reference has not seen.
            if reference_paths:
                good = good_images(reference_paths)
                statistics = reference_anomaly_maps(backend, good)
                manifest = with_reference_maps(manifest, statistics, reference_statistic, score_reference)
                backend.manifest = manifest
            calibration = calibrate_threshold(backend, held_out_images, false_alarm_rate)
        threshold = calibration.pop("threshold")
        metrics = {
            "calibration": calibration,
            "reference_images": len(reference_paths),
            "reference_statistic": reference_statistic if reference_paths else None,
            "score_reference": None if manifest.score_reference == "mean" else manifest.score_reference,
            "epochs_trained": state["epoch"],
            "final_train_loss": state["losses"][-1],
            "onnx_max_abs_diff": diff,
        }
    manifest = replace(manifest, threshold=threshold, metrics=metrics)
    manifest.save(manifest_path(out_path))
    return manifest
