"""The btrfs snapshotter: every snapshot is a subvolume (it does not know it is a plugin).

Layout under ``root`` (bookkeeping in :mod:`runtime.plugins.snapshots.backend`)::

    metadata.db
    snapshots/<id>/fs      a btrfs subvolume

A snapshot with a parent is ``btrfs subvolume snapshot`` of the parent's
subvolume: instant, and sharing every block until one side writes. Views are
read-only snapshots (``-r``); a committed snapshot is made read-only once the
commit is recorded, so no mount can change a layer that children share.
Mounts are a single bind of the subvolume directory, ``rw`` for an active
snapshot and ``ro`` for a view.

Usage is measured like ``du`` on the subvolume, so it counts blocks shared with
the parent too: exact exclusive figures would need btrfs quota groups, which
slow every write on the filesystem.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import final

import anyio.to_thread

from moorage_snapshotter_btrfs import btrfs
from runtime.core.errors import NotImplementedYet
from runtime.plugins.snapshots.api import Kind
from runtime.plugins.snapshots.backend import MetaStoreSnapshotter
from runtime.plugins.snapshots.record import Record

__all__ = ["BtrfsSnapshotter", "check_supported"]


def check_supported(root: Path) -> None:
    """Check that ``root`` can hold subvolumes (blocking).

    Raises:
        NotImplementedYet: ``root`` is not on btrfs, or btrfs-progs is missing;
            the message says which, e.g. ``/var/lib/x is not on btrfs (found
            ext2/ext3)``.
    """
    found = btrfs.filesystem_type(root)
    if found != "btrfs":
        raise NotImplementedYet(f"{root} is not on btrfs (found {found})")
    if shutil.which("btrfs") is None:
        raise NotImplementedYet("btrfs-progs is not installed (no btrfs command on PATH)")


@final
class BtrfsSnapshotter(MetaStoreSnapshotter):
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` on btrfs subvolumes.

    Mounts are the base class's: one ``rbind`` of the snapshot's subvolume.

    Args:
        root: Directory on a btrfs filesystem, owned by this snapshotter
            (see :func:`check_supported`).
        sync_remove: Delete a removed snapshot's subvolume before ``remove``
            returns; when false it is left for :meth:`cleanup`.
    """

    def __init__(self, root: Path, *, sync_remove: bool = True) -> None:
        # Subvolumes, read-only ones included, are not removed by rmtree.
        super().__init__(root, sync_remove=sync_remove, delete_tree=btrfs.delete_tree)

    def populate(self, kind: Kind, new: Path, parents: Sequence[Path]) -> None:
        """Make ``new/fs`` a snapshot of the nearest parent, or an empty subvolume.

        A view's subvolume is read-only, an active one's writable.
        """
        read_only = kind is Kind.VIEW
        if parents:
            btrfs.snapshot_subvolume(parents[0] / "fs", new / "fs", read_only=read_only)
            return
        btrfs.create_subvolume(new / "fs")
        if read_only:
            btrfs.set_read_only(new / "fs")

    async def on_commit(self, record: Record) -> None:
        """Make the committed layer's subvolume read-only, as children share it."""
        # Read-only only once the commit is recorded: a commit that fails
        # (name taken) must leave the active snapshot writable.
        await anyio.to_thread.run_sync(btrfs.set_read_only, self.fs(record.id))
