"""riad-trainer: train, evaluate, export and build engines."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Learn what a good part looks like, measure it, export it.")
