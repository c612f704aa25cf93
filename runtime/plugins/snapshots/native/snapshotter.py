"""The native snapshotter: copies, not layers (it does not know it is a plugin).

Layout under ``root`` (bookkeeping in :mod:`runtime.plugins.snapshots.storage`)::

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import final

import anyio.to_thread

from runtime.core.errors import FailedPrecondition, MoorageError, ResourceExhausted
from runtime.plugins.snapshots.api import Info, Kind, Mount, Usage
from runtime.plugins.snapshots.storage import MetaStore, Record, disk_usage

__all__ = ["NativeSnapshotter"]


@final
class NativeSnapshotter:
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` that copies parents.

    Args:
        root: Directory owned by this snapshotter; any local filesystem works.
        sync_remove: Delete a removed snapshot's data before ``remove``
            returns; when false it is left for :meth:`cleanup`.
    """

    def __init__(self, root: Path, *, sync_remove: bool = True) -> None:
        self.root = Path(root)
        self._store = MetaStore(self.root)
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
        record, _ = await self._store.create(Kind.ACTIVE, key, parent, labels, _populate)
        return self._mounts(record)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.view`."""
        record, _ = await self._store.create(Kind.VIEW, key, parent, labels, _populate)
        return self._mounts(record)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.commit`."""
        await self._store.commit(name, key, labels, lambda path: disk_usage(path / "fs"))

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


def _populate(new: Path, parents: Sequence[Path]) -> None:
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
        if "No space left" in result.stderr:
            raise ResourceExhausted(f"copying parent layer {parents[0]}: {result.stderr.strip()}")
        raise MoorageError(f"copying parent layer {parents[0]} failed: {result.stderr.strip()}")
