"""riad-trainer: train, evaluate, export and build engines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Learn what a good part looks like, measure it, export it.")


@app.callback()
def main() -> None:
    # A callback keeps every command a subcommand, however many there are.
    pass


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="the exported model, MODEL.onnx, with MODEL.onnx.json beside it")],
    data_dir: Annotated[Path, typer.Argument(help="an MVTec AD category: test/<defect>/ images, ground_truth/ masks")],
    out: Annotated[
        Path | None, typer.Option("--out", help="where metrics and overlays go (default: eval/ beside the model)")
    ] = None,
    overlays: Annotated[bool, typer.Option(help="save a heatmap overlay per test image")] = True,
):
    """Measure detection on a labelled test set: AUROC, PRO, false alarms at the threshold."""
    from edge.manifest import ManifestError
    from trainer.data import DataError
    from trainer.evaluate import evaluate as run_evaluation
    from trainer.evaluate import markdown_table

    if model.suffix.lower() != ".onnx":
        typer.echo(f"error: {model} is not an ONNX model; evaluate measures the exported MODEL.onnx", err=True)
        raise typer.Exit(2)
    try:
        report = run_evaluation(model, data_dir, out or model.parent / "eval", overlays=overlays)
    except (DataError, ManifestError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(markdown_table(report))
