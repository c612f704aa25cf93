"""Measuring a snapshot on disk: :func:`disk_usage`, the ``du`` every backend uses."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from runtime.plugins.snapshots.api import Usage

__all__ = ["disk_usage"]


def disk_usage(path: Path) -> Usage:
    """Measure a tree like ``du``: allocated bytes and inodes, hardlinks counted once.

    Symlinks are not followed; the root directory itself counts. Files that
    vanish during the walk (a container still running) are skipped.
    """
    seen: set[tuple[int, int]] = set()
    size = 0
    pending = [path]
    while pending:
        current = pending.pop()
        try:
            st = current.lstat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        size += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(FileNotFoundError), os.scandir(current) as it:
                pending.extend(Path(entry.path) for entry in it)
    return Usage(size=size, inodes=len(seen))
