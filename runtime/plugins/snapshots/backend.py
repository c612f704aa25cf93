"""The base of snapshotters whose bookkeeping is a :class:`~.storage.MetaStore`.

The native, overlayfs and btrfs backends differ only in how a new snapshot's
directory is filled, how it is mounted, and (btrfs) what a commit does to the
data; records, labels, usage, removal, walking and cleanup are the same for all
of them and live here, in :class:`MetaStoreSnapshotter`. It is part of the
plugin-author surface: a third-party backend subclasses it like ours do.

Layout under ``root``::

    metadata.db            the records (:mod:`.storage`)
    snapshots/<id>/fs      the snapshot's tree, measured by usage and commit
    snapshots/<id>/...     anything else the backend needs (overlay's workdir)
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio.to_thread

from runtime.core.errors import FailedPrecondition
from runtime.plugins.snapshots.api import Info, Kind, Mount, Usage
from runtime.plugins.snapshots.disk import disk_usage
from runtime.plugins.snapshots.record import Record
from runtime.plugins.snapshots.storage import MetaStore

__all__ = ["MetaStoreSnapshotter"]


class MetaStoreSnapshotter(abc.ABC):
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` over a :class:`MetaStore`.

    A backend implements :meth:`populate`, and overrides :meth:`mounts_of` when
    one bind of the snapshot's ``fs`` is not how it mounts, and :meth:`on_commit`
    when a committed layer needs more than its record.

    Args:
        root: Directory owned by this snapshotter.
        sync_remove: Delete a removed snapshot's data before ``remove``
            returns; when false it is left for :meth:`cleanup` (faster removes,
            GC reclaims the space later).
        delete_tree: Deletes one snapshot directory, blocking and best effort;
            ``None`` is ``rmtree``. See :class:`MetaStore`.
    """

    def __init__(
        self,
        root: Path,
        *,
        sync_remove: bool = True,
        delete_tree: Callable[[Path], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self._store = MetaStore(self.root, delete_tree=delete_tree)
        self._sync_remove = sync_remove

    # -- what a backend provides ---------------------------------------------

    @abc.abstractmethod
    def populate(self, kind: Kind, new: Path, parents: Sequence[Path]) -> None:
        """Fill the directory of a new active or view snapshot; ``new / "fs"`` must exist after.

        Blocking: it runs in a worker thread, outside the store's lock. A
        failure (raise a :mod:`runtime.core.errors` class) leaves no snapshot.

        Args:
            kind: :attr:`Kind.ACTIVE` or :attr:`Kind.VIEW`.
            new: The snapshot's directory, empty, under a temporary name.
            parents: The directories of the committed parents, nearest first;
                empty for a snapshot without a parent.
        """

    def mounts_of(self, record: Record, parents: Sequence[int]) -> list[Mount]:
        """The mounts of an active or view snapshot: by default a bind of its ``fs``.

        Args:
            record: The snapshot.
            parents: The ids of its committed parents, nearest first.
        """
        mode = "rw" if record.kind is Kind.ACTIVE else "ro"
        return [Mount(type="bind", source=str(self.fs(record.id)), options=[mode, "rbind"])]

    async def on_commit(self, record: Record) -> None:  # noqa: B027  # optional: empty on purpose
        """Finish a commit once it is recorded; by default there is nothing to do.

        Called only after the record says committed, so that a commit that
        fails (the name is taken) leaves the active snapshot as it was.
        """

    def fs(self, id: int) -> Path:
        """The tree of snapshot ``id``."""
        return self._store.path(id) / "fs"

    def snapshot_dir(self, id: int) -> Path:
        """The directory of snapshot ``id``: its ``fs`` and the backend's own files."""
        return self._store.path(id)

    # -- the Snapshotter contract ----------------------------------------------

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
            # Still changing, so measured now; only its own fs: parents that
            # share data (overlay lowers) are counted by their own usage.
            return await anyio.to_thread.run_sync(disk_usage, self.fs(record.id))
        return record.usage()

    async def mounts(self, key: str) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.mounts`."""
        record, parents = await self._store.get_with_parents(key)
        if record.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed: it has no mounts")
        return self.mounts_of(record, parents)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.prepare`."""
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.view`."""
        return await self._create(Kind.VIEW, key, parent, labels)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.commit`."""
        record = await self._store.commit(name, key, labels, lambda path: disk_usage(path / "fs"))
        await self.on_commit(record)

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

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        record, parents = await self._store.create(
            kind, key, parent, labels, functools.partial(self.populate, kind)
        )
        return self.mounts_of(record, parents)
