"""Measuring a snapshot on disk: :func:`disk_usage`, the ``du`` every backend uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime.plugins.snapshots.api import Usage

__all__ = ["disk_usage"]


def disk_usage(path: Path) -> Usage:
    """Measure a tree like ``du``: allocated bytes and inodes, hardlinks counted once.

    Symlinks are not followed; the root directory itself counts. Files that
    vanish during the walk (a container still running) are skipped.

    Every committed layer is measured, so this is on a pull's path: it works on
    ``os.DirEntry`` objects and strings rather than ``Path`` objects, and keeps
    only inodes with several links in its set (a directory cannot have a second
    hard link): about a third of the CPU of a ``Path`` walk.
    """
    try:
        root = os.lstat(path)
    except FileNotFoundError:
        return Usage(size=0, inodes=0)
    size, inodes = root.st_blocks * 512, 1
    linked: set[tuple[int, int]] = set()
    pending = [os.fspath(path)] if stat.S_ISDIR(root.st_mode) else []
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if st.st_nlink > 1 and not is_dir:
                    key = (st.st_dev, st.st_ino)
                    if key in linked:
                        continue
                    linked.add(key)
                size += st.st_blocks * 512
                inodes += 1
                if is_dir:
                    pending.append(entry.path)
    return Usage(size=size, inodes=inodes)
