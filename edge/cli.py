"""riad-edge: the command line of the inspector."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Watch a camera, find defects, publish them over MQTT.")
