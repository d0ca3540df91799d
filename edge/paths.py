"""Folders a user names for us to write in (snapshots, spools, models, reports)."""

from __future__ import annotations

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
