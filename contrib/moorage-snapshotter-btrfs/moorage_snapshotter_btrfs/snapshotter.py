"""The btrfs snapshotter: every snapshot is a subvolume (it does not know it is a plugin).

Layout under ``root`` (bookkeeping in :mod:`runtime.plugins.snapshots.storage`)::

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import final

import anyio.to_thread

from moorage_snapshotter_btrfs import btrfs
from runtime.core.errors import FailedPrecondition, NotImplementedYet
from runtime.plugins.snapshots.api import Info, Kind, Mount, Usage
from runtime.plugins.snapshots.storage import MetaStore, Record, disk_usage

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
class BtrfsSnapshotter:
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` on btrfs subvolumes.

    Args:
        root: Directory on a btrfs filesystem, owned by this snapshotter
            (see :func:`check_supported`).
        sync_remove: Delete a removed snapshot's subvolume before ``remove``
            returns; when false it is left for :meth:`cleanup`.
    """

    def __init__(self, root: Path, *, sync_remove: bool = True) -> None:
        self.root = Path(root)
        self._store = MetaStore(self.root, delete_tree=btrfs.delete_tree)
        self._sync_remove = sync_remove

    async def stat(self, key: str) -> Info:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.stat`."""
        return (await self._store.get(key)).info()

    async def update(self, key: str, labels: Mapping[str, str]) -> Info:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.update`."""
        return (await self._store.update(key, labels)).info()

    async def usage(self, key: str) -> Usage:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.usage`."""
        record = await self._store.get(key)
        if record.kind is Kind.ACTIVE:
            return await anyio.to_thread.run_sync(disk_usage, self._fs(record.id))
        return record.usage()

    async def mounts(self, key: str) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.mounts`."""
        record = await self._store.get(key)
        if record.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed: it has no mounts")
        return self._mounts(record)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.prepare`."""
        record, _ = await self._store.create(Kind.ACTIVE, key, parent, labels, _populate_active)
        return self._mounts(record)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.view`."""
        record, _ = await self._store.create(Kind.VIEW, key, parent, labels, _populate_view)
        return self._mounts(record)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.commit`."""
        record = await self._store.commit(name, key, labels, lambda path: disk_usage(path / "fs"))
        # Read-only only once the commit is recorded: a commit that fails
        # (name taken) must leave the active snapshot writable.
        await anyio.to_thread.run_sync(btrfs.set_read_only, self._fs(record.id))

    async def remove(self, key: str) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.remove`."""
        await self._store.remove(key, sync=self._sync_remove)

    async def walk(self, *filters: str) -> list[Info]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.walk`."""
        return await self._store.walk(*filters)

    async def cleanup(self) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.cleanup`."""
        await self._store.cleanup()

    async def close(self) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.close`."""
        await self._store.close()

    def _fs(self, id: int) -> Path:
        return self._store.path(id) / "fs"

    def _mounts(self, record: Record) -> list[Mount]:
        mode = "rw" if record.kind is Kind.ACTIVE else "ro"
        return [Mount(type="bind", source=str(self._fs(record.id)), options=[mode, "rbind"])]


def _populate_active(new: Path, parents: Sequence[Path]) -> None:
    """Make ``new/fs`` a writable snapshot of the nearest parent, or an empty subvolume."""
    if parents:
        btrfs.snapshot_subvolume(parents[0] / "fs", new / "fs")
    else:
        btrfs.create_subvolume(new / "fs")


def _populate_view(new: Path, parents: Sequence[Path]) -> None:
    """Make ``new/fs`` a read-only snapshot of the nearest parent, or an empty read-only one."""
    if parents:
        btrfs.snapshot_subvolume(parents[0] / "fs", new / "fs", read_only=True)
    else:
        btrfs.create_subvolume(new / "fs")
        btrfs.set_read_only(new / "fs")
