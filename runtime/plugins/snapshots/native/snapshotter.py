"""The native snapshotter: copies, not layers (it does not know it is a plugin).

Layout under ``root`` (bookkeeping in :mod:`runtime.plugins.snapshots.backend`)::

    metadata.db
    snapshots/<id>/fs      a complete tree: a copy of the parent's, then changed

Every snapshot, active or view, gets its own copy of its parent's tree, made
with ``cp -a --reflink=auto`` so that ownership, modes (setuid included),
xattrs, hardlinks, symlinks and device nodes survive, and so that filesystems
with reflinks (btrfs, XFS) share the blocks. Mounts are a single ``rbind``,
``rw`` or ``ro``. Usage counts the whole copy, since nothing is shared.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import final

from runtime.core.errors import MoorageError, ResourceExhausted
from runtime.plugins.snapshots.api import Kind
from runtime.plugins.snapshots.backend import MetaStoreSnapshotter

__all__ = ["NativeSnapshotter"]


@final
class NativeSnapshotter(MetaStoreSnapshotter):
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` that copies parents.

    Mounts are the base class's: one ``rbind`` of the snapshot's own copy.

    Args:
        root: Directory owned by this snapshotter; any local filesystem works.
        sync_remove: Delete a removed snapshot's data before ``remove``
            returns; when false it is left for :meth:`cleanup`.
    """

    def __init__(self, root: Path, *, sync_remove: bool = True) -> None:
        super().__init__(root, sync_remove=sync_remove)

    def populate(self, kind: Kind, new: Path, parents: Sequence[Path]) -> None:
        """Fill ``new/fs`` with a copy of the nearest parent's tree, or an empty directory."""
        fs = new / "fs"
        if not parents:
            fs.mkdir()
            os.chmod(fs, 0o755)  # not subject to the daemon's umask
            return
        # cp rather than shutil.copytree: copytree loses hardlinks, device nodes
        # and ownership, and cannot reflink.
        result = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", str(parents[0] / "fs"), str(fs)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},  # stable messages to classify
        )
        if result.returncode != 0:
            where = f"copying parent layer {parents[0]}"
            if "No space left" in result.stderr:
                raise ResourceExhausted(f"{where}: {result.stderr.strip()}")
            raise MoorageError(f"{where} failed: {result.stderr.strip()}")
