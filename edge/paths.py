"""Folders a user names for us to write in (snapshots, spools, models, reports)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def make_folder(folder: Path) -> None:
    """Create `folder` and the folders above it, as `mkdir -p` does.

    A file where a folder must be is named: NotADirectoryError "<it> is a file, not a folder".
    mkdir itself says "File exists" or "Not a directory", which leaves the user to find which.
    """
    for candidate in (folder, *folder.parents):
        if candidate.exists() and not candidate.is_dir():
            raise NotADirectoryError(f"{candidate} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)


@contextmanager
def replaced_when_done(path: Path) -> Iterator[Path]:
    """Write `path` as `<path>.partial`, the path this yields; it replaces `path` only when the block ends well.

    A model is often written over the one a line runs: an export that fails its checks or
    is stopped halfway must leave that one as it was, not a half-written or deleted file.
    """
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
