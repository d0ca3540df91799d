"""`python -m edge ...` is `riad-edge ...` (the demo starts its watcher this way)."""

from edge.cli import app

app(prog_name="riad-edge")
