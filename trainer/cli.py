"""riad-trainer: train, evaluate, export and build engines."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from edge.method.anomaly_map import DEFAULT_SCORE_REFERENCE, SCORE_TOP_FRACTION, describe_score
from edge.paths import make_folder

# What export's summary says of the manifest's map_channels (edge.method.anomaly_map.map_channels_for).
MAP_DESCRIPTIONS = {
    "rgb": "gradients of R, G and B each (the training images have colour)",
    "grey": "gradients of the grey image (the training images are grey)",
}

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Learn what a good part looks like, measure it, export it.")


@app.callback()
def main() -> None:
    # A callback keeps every command a subcommand, however many there are.
    pass


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="defect-free images: an MVTec category (<cat>/train/good) or a folder")],
    out: Annotated[Path, typer.Option("--out", help="the run folder; the checkpoint is OUT/last.pt")],
    recipe: Annotated[
        str | None, typer.Option(help="cpu: 16-wide net, 160x160 px, 40 epochs, 8,000 images seen or 50 minutes, whichever ends first: "
                    "13 minutes for 200 images on a 2-core EPYC Zen 5 (docs/benchmarks.md); gpu: the paper's net at 256 px, 300 epochs")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="train this many epochs in all, however many images and minutes (may grow on --resume; "
                     "--minutes as well caps them)"),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(help="a time budget: stop after the first epoch past this many minutes of training (the learning rate's "
                     "schedule spans them); without --epochs, time alone ends the run; 0: none, the recipe's epochs all trained"),
    ] = None,
    input_size: Annotated[
        int | None, typer.Option(help="the input has about SIZE x SIZE pixels, in the images' aspect ratio, never more than they have; a multiple of 16")
    ] = None,
    crop_size: Annotated[int | None, typer.Option(help="train on random crops of this side (0: whole images); a multiple of 16")] = None,
    width: Annotated[int | None, typer.Option(help="U-Net base width (64 = the paper's net)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per step")] = None,
    seed: Annotated[int | None, typer.Option(help="seeds weights, masks, shuffling and the hold-out split")] = None,
    held_out: Annotated[
        int | None,
        typer.Option(help="hold out this many good images, not trained on, to set the threshold (default: about 10 %, 4 to 20); "
                     "more give a threshold that better knows how good parts vary"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in OUT from its last epoch")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available)")] = None,
    roi: Annotated[str | None, typer.Option(help="x,y,width,height[,rotation]: train on this crop of every image, as the edge camera's roi crops it")] = None,
    bf16: Annotated[
        bool | None,
        typer.Option("--bf16/--float32", help="the net in bfloat16 or float32 (default: bfloat16 on a CUDA GPU only); "
                     "--bf16 trains about 1.6x faster at the same accuracy on a CPU with bfloat16 instructions "
                     "(AVX512_BF16, AMX), several times slower on one without (docs/benchmarks.md)"),
    ] = None,
):
    """Learn what a good part looks like from defect-free images."""
    from trainer.data import MIN_HELD_OUT, DataError
    from trainer.train import UNLIMITED_EPOCHS, TrainError, checkpoint_path, cpu_has_bf16, resolve_device, resume_config
    from trainer.train import recipe as named_recipe
    from trainer.train import train as run_training

    if held_out is not None and held_out < MIN_HELD_OUT:  # the config's 0 ("about 10 %") is leaving the option out
        raise typer.BadParameter(f"--held-out must be at least {MIN_HELD_OUT}, whose spread sets the threshold, not {held_out}; "
                                 "leave it out to hold out about 10 % of the images")
    options: dict[str, int | str | None] = {"epochs": epochs, "input_size": input_size, "crop_size": crop_size, "base_width": width}
    options |= {"batch_size": batch_size, "seed": seed, "device": device, "roi": roi, "minutes": minutes, "held_out": held_out}
    options["bf16"] = bf16
    if minutes and epochs is None:
        options["epochs"] = UNLIMITED_EPOCHS
    if epochs is not None and minutes is None:
        options["minutes"] = 0.0  # the epochs asked for, all of them, however long they take
    if epochs is not None or minutes:
        options["max_images_seen"] = 0  # the user's own count or budget replaces the recipe's; --minutes 0 only lifts the time
    try:
        if resume:
            config = resume_config(out, recipe=recipe, **options)
        else:
            config = named_recipe(recipe or "cpu", **options)
        on_cpu = resolve_device(config.device).type == "cpu"
        if recipe == "gpu" and on_cpu:
            typer.echo("warning: the gpu recipe (the paper's net, 300 epochs) on the CPU takes days; "
                       "use --recipe cpu here, or a machine with a CUDA GPU. Ctrl-C keeps the progress.", err=True)
        if config.bf16 and on_cpu and cpu_has_bf16() is False:
            typer.echo("warning: --bf16 on a CPU without bfloat16 instructions (AVX512_BF16, AMX) is emulated, "
                       "several times slower than float32 (docs/benchmarks.md); drop --bf16 here", err=True)
        checkpoint = run_training(data_dir, out, config, resume=resume)
    except (DataError, TrainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        if checkpoint_path(out).is_file():
            typer.echo(f"\ninterrupted; progress is saved in {out}; continue with --resume", err=True)
        else:
            typer.echo("\ninterrupted before the first checkpoint; nothing was saved", err=True)
        raise typer.Exit(130) from None
    # Quoted: the line is meant to be pasted into a shell, and folder names have spaces.
    typer.echo(f"trained: {checkpoint}\nnext: riad-trainer export {shlex.quote(str(checkpoint))} --out engines/NAME.onnx")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="a training checkpoint, RUN/last.pt")],
    out: Annotated[Path, typer.Option("--out", help="the model file to write, e.g. engines/bottle.onnx")],
    int8: Annotated[
        bool, typer.Option("--int8", help="quantise to INT8 for CPU edge boxes (faster on ONNX Runtime; not for TensorRT)")
    ] = False,
    false_alarm_rate: Annotated[
        float | None,
        typer.Option(
            help="set the threshold for this share of good parts flagged, e.g. 0.01 (default: "
            "max(mean + 3 std, max) of the held-out good scores)"
        ),
    ] = None,
    reference_map: Annotated[
        bool,
        typer.Option(
            help="score how far a frame rises above good parts' anomaly maps (measured on training "
            "images); --no-reference-map: the paper's plain map, e.g. for parts that lie anywhere in the view"
        ),
    ] = True,
    reference_statistic: Annotated[
        str,
        typer.Option(
            help="the reference of the map shown, per pixel: mean, the good parts' average (it shows a defect's "
            "whole extent), or max, the highest of them (it shows only a defect's core); the score's is "
            "--score-reference (docs/benchmarks.md)"
        ),
    ] = "mean",
    score_reference: Annotated[
        str | None,
        typer.Option(
            help="what the image score counts of the map shown (its rise above the good parts' average): mean, "
            "all of it; max, its rise above the highest of their maps at each pixel (set the threshold from the "
            "line's good parts then: riad-edge calibrate); spread, all of it weighted down where good parts' maps "
            f"vary (default: {DEFAULT_SCORE_REFERENCE}; mean with --no-reference-map; docs/benchmarks.md)"
        ),
    ] = None,
    cell_sizes: Annotated[
        str | None,
        typer.Option(
            help="mask with only these of the trained cell sizes, e.g. 4,8,16: 9 variants a frame instead of 12, "
            "for speed (default: all of them, as the paper; docs/benchmarks.md measures the cost)"
        ),
    ] = None,
    mask_draws: Annotated[
        int,
        typer.Option(
            help="mask every cell size this many times, each a new draw of its cells, and average the maps: "
            "N times the variants a frame, a score that depends less on one draw (for a GPU edge; 1 to 8)"
        ),
    ] = 1,
    mask_seed: Annotated[
        int | None,
        typer.Option(
            help="draw the edge's masked cells from this seed (default: the training seed); each seed is another "
            "draw of the same model, and on fine defects the draw moves the scores (docs/benchmarks.md)"
        ),
    ] = None,
    map_c: Annotated[
        float | None,
        typer.Option(
            help="the anomaly map's contrast floor, its GMS constant c (default: measured on the good training "
            "images held out, from their typical gradient; 0.0026 is the paper's, made for natural photographs; docs/benchmarks.md)"
        ),
    ] = None,
    score_top_fraction: Annotated[
        float,
        typer.Option(
            help="the image score: the mean of the anomaly map's highest this share of pixels (0.01: its highest "
            "1 %, less noisy than one pixel); 0: the map's maximum, the paper's score (docs/benchmarks.md)"
        ),
    ] = SCORE_TOP_FRACTION,
):
    """Write the edge model: ONNX checked against torch, threshold calibrated, manifest beside it."""
    from edge.manifest import ManifestError, manifest_path
    from edge.method.threshold import rule_summary
    from trainer.data import FEW_HELD_OUT, DataError
    from trainer.export import ExportError, export_onnx, parse_cell_sizes
    from trainer.train import TrainError

    try:
        sizes = None if cell_sizes is None else parse_cell_sizes(cell_sizes)
        manifest = export_onnx(checkpoint, out, int8=int8, false_alarm_rate=false_alarm_rate, reference_map=reference_map,
                               cell_sizes=sizes, mask_draws=mask_draws, mask_seed=mask_seed,
                               reference_statistic=reference_statistic, score_reference=score_reference, map_c=map_c,
                               score_top_fraction=score_top_fraction or None)
    except (TrainError, ExportError, DataError, ManifestError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    calibration = manifest.metrics["calibration"]
    held_out = f"{calibration['count']} held-out good images"
    rule = rule_summary(calibration["false_alarm_rate"], held_out)
    if calibration["false_alarm_rate"] is not None:
        rule += f"; {calibration['held_out_above_threshold']} of them score above it"
    advice = ""
    if calibration["count"] < FEW_HELD_OUT:  # a spread from so few images is a guess
        advice = (f"advice:    a threshold from {calibration['count']} images is a rough guess; before a line trusts it, set it "
                  f"from good parts on the line with `riad-edge calibrate` (or train with --held-out {FEW_HELD_OUT} or more)\n")
    images = manifest.metrics.get("reference_images")
    reference = "none (the plain map)"
    if manifest.reference_map:
        how = "per-pixel maximum" if manifest.metrics["reference_statistic"] == "max" else "mean"
        reference = f"the {how} of the anomaly maps of {images} training images"
    typer.echo(
        f"model:     {out}\nmanifest:  {manifest_path(out)}\nmodel id:  {manifest.model_id}\n"
        f"threshold: {manifest.threshold:.4f} ({rule})\n"
        f"{advice}"
        f"reference: {reference}\n"
        f"map:       {MAP_DESCRIPTIONS[manifest.map_channels]}, GMS constant c {manifest.map_c:.2g}\n"
        f"score:     {describe_score(manifest.score_top_fraction, manifest.score_reference)}\n"
        f"variants:  {manifest.mask_spec.num_variants} a frame ({variants_summary(manifest.cell_sizes, manifest.num_sets)}), "
        f"cells drawn from mask seed {manifest.mask_seed}\n"
        f"onnx vs torch max abs diff: {manifest.metrics['onnx_max_abs_diff']:.1e}"
    )


def variants_summary(cell_sizes: list[int], num_sets: int) -> str:
    """What a frame's variants are, e.g. "cell sizes 2, 4, 8, 16, 3 sets each, 2 draws"."""
    sizes = list(dict.fromkeys(cell_sizes))  # each size once, in order; repeats are further draws
    draws = len(cell_sizes) // len(sizes)
    return f"cell sizes {', '.join(map(str, sizes))}, {num_sets} sets each" + (f", {draws} draws" if draws > 1 else "")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="the exported model, MODEL.onnx, with MODEL.onnx.json beside it")],
    data_dir: Annotated[
        Path, typer.Argument(help="a labelled test set: test/good/ and test/<defect>/ images (or good/ and <defect>/ "
                                "in DATA itself), ground_truth/ masks optional")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="where metrics and overlays go (default: eval/ beside the model)")
    ] = None,
    overlays: Annotated[bool, typer.Option(help="save a heatmap overlay per test image")] = True,
):
    """Measure detection on a labelled test set: AUROC, PRO, false alarms at the threshold, plots to choose one."""
    from edge.backends import BackendError
    from edge.manifest import ManifestError
    from trainer.data import DataError
    from trainer.evaluate import evaluate as run_evaluation
    from trainer.evaluate import markdown_table

    if model.suffix.lower() != ".onnx":
        typer.echo(f"error: {model} is not an ONNX model; evaluate measures the exported MODEL.onnx", err=True)
        raise typer.Exit(2)
    out = out or model.parent / "eval"
    try:
        report = run_evaluation(model, data_dir, out, overlays=overlays)
    except (BackendError, DataError, ManifestError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(markdown_table(report))
    typer.echo(f"written to {out}: metrics.md, metrics.json, " + ", ".join(report["plots"].values()))


@app.command("build-engine")
def build_engine(
    model: Annotated[Path, typer.Argument(help="the exported model, MODEL.onnx, with its manifest beside it")],
    out: Annotated[Path | None, typer.Option("--out", help="the engine to write (default: MODEL.plan)")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="full precision instead of FP16")] = False,
    max_batch: Annotated[
        int | None, typer.Option(help="largest batch, a multiple of one frame's 12 variants (default: 4 frames)")
    ] = None,
    timing_cache: Annotated[
        Path | None, typer.Option(help="TensorRT timing cache, read if present and saved: rebuilds go faster")
    ] = None,
):
    """Build a TensorRT engine on THIS device (engines are not portable; see docs/gpu.md)."""
    from edge.backends import ENGINE_SUFFIXES
    from edge.backends.gpu_available import GpuUnavailable
    from edge.manifest import ManifestError, manifest_path
    from trainer.engine import EngineBuildError
    from trainer.engine import build_engine as build

    engine_path = out or model.with_suffix(".plan")
    if engine_path.suffix.lower() not in ENGINE_SUFFIXES:  # what riad-edge run takes; and not the .cubin beside it
        typer.echo(f"error: --out {engine_path}: an engine's name ends in .plan or .engine", err=True)
        raise typer.Exit(2)
    try:
        manifest = build(model, engine_path, fp16=not fp32, max_batch=max_batch, timing_cache=timing_cache)
    except GpuUnavailable as missing:
        typer.echo(
            f"error: {missing}.\nEngines are built on the device that runs them (a Jetson uses JetPack's "
            "TensorRT); copy the ONNX model there and run build-engine on it. See docs/gpu.md.",
            err=True,
        )
        raise typer.Exit(2) from None
    except (EngineBuildError, ManifestError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    facts = manifest.engine
    typer.echo(
        f"engine:   {engine_path}\nmanifest: {manifest_path(engine_path)}\n"
        f"built for {facts['gpu_name']} (compute {facts['compute_capability']}) with TensorRT "
        f"{facts['tensorrt_version']}, {facts['precision']}, batch {manifest.mask_spec.num_variants}..{facts['max_batch']}\n"
        f"kernels:  {engine_path.parent / manifest.kernels['file']} ({manifest.kernels['arch']}, {manifest.kernels['compiler']})"
    )


@app.command("build-kernels")
def build_kernels(
    out: Annotated[Path, typer.Option("--out", help="the folder to write riad_kernels.ARCH.cubin (and its .json) into")],
    arch: Annotated[
        str | None, typer.Option(help="the GPU architecture, e.g. sm_87 (Jetson Orin); default: this machine's GPU")
    ] = None,
):
    """Compile the CUDA kernels for build-engine to use where it finds no nvcc (a runtime image; docs/gpu.md)."""
    from edge.backends.gpu_available import GpuUnavailable, cuda_device
    from edge.backends.kernel_binary import (
        PREBUILT_DIR_VARIABLE,
        KernelCompileError,
        arch_for,
        check_arch,
        compile_kernels,
        save_prebuilt,
    )

    try:
        arch = check_arch(arch or arch_for(cuda_device().compute_capability))
        make_folder(out)  # before the compile, which takes a while
        path = save_prebuilt(compile_kernels(arch), out)
    except GpuUnavailable as missing:
        typer.echo(f"error: {missing}, so no GPU to compile for; pass --arch, e.g. --arch sm_87 for a Jetson Orin", err=True)
        raise typer.Exit(2) from None
    except (KernelCompileError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot write the kernels into {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"kernels: {path} ({arch})\nbuild-engine uses them where it finds no nvcc, with {PREBUILT_DIR_VARIABLE}={out}")
