"""Bookkeeping shared by the snapshotter backends: records in SQLite, directories on disk.

A backend owns ``<root>``; this module keeps::

    <root>/metadata.db          one row per snapshot (WAL, one connection)
    <root>/snapshots/<id>/      the data of snapshot <id>; layout is the backend's
    <root>/snapshots/new-*      being built; renamed to <id> inside the insert
    <root>/snapshots/rm-*       being deleted; renamed from <id> inside the delete

The ordering makes a crash harmless. A snapshot directory is built under a
temporary name and renamed to ``<id>`` in the same transaction that inserts
its record, so a reader never sees a half-made snapshot. Removal deletes the
record and renames the directory away in one transaction, deleting the data
afterwards. Whatever a crash leaves behind is a directory no record
references, which :meth:`MetaStore.cleanup` deletes.

The table and its queries live in :mod:`.record_db`.

Every public method is a coroutine that runs its blocking work through
:func:`anyio.to_thread.run_sync`; database access is serialised by one lock
while slow filesystem work (copying, measuring) runs outside it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, final

import anyio.to_thread
import msgspec

from runtime.core import filters
from runtime.core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from runtime.core.faults import fault_point
from runtime.plugins.snapshots import record_db
from runtime.plugins.snapshots.api import Info, Kind, Usage

# Record and disk_usage have their own modules; they stay importable from here
# because backends built against plugin API 1 import them from this module.
from runtime.plugins.snapshots.disk import disk_usage
from runtime.plugins.snapshots.record import Record

__all__ = ["MetaStore", "Populate", "Record", "disk_usage"]

#: Fills a new snapshot directory: ``populate(new_dir, parent_dirs)``, parents
#: nearest first. Runs in a worker thread, outside the database lock.
Populate = Callable[[Path, Sequence[Path]], None]

def _rmtree(path: Path) -> None:
    """The default ``delete_tree``: best effort, like ``rm -rf``."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(labels or {})
    for k, v in result.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise InvalidArgument(f"label {k!r}={v!r}: keys must be non-empty strings")
    return result


def _fsync_dir(path: Path) -> None:
    # Make a rename durable before the transaction that depends on it commits.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@final
class MetaStore:
    """Snapshot records of one backend, and the lifecycle of their directories.

    Args:
        root: The backend's root; created on first use, not by the constructor.
        delete_tree: Deletes one snapshot directory (removed, orphaned or
            half-built); blocking, best effort. The default is ``rmtree``; a
            backend whose directories hold more than files (btrfs subvolumes,
            read-only ones included) passes its own.
    """

    def __init__(self, root: Path, *, delete_tree: Callable[[Path], None] | None = None) -> None:
        self.root = Path(root)
        self._delete_tree = delete_tree or _rmtree
        self.snapshots_dir = self.root / "snapshots"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # Temporary dirs being populated right now: cleanup must not take them.
        self._building: set[str] = set()

    def path(self, id: int) -> Path:
        """The directory holding the data of snapshot ``id``."""
        return self.snapshots_dir / str(id)

    # -- public coroutines -------------------------------------------------

    async def get(self, key: str) -> Record:
        """Return the record of ``key``.

        Raises:
            NotFound: No snapshot has that key.
        """
        return await anyio.to_thread.run_sync(self._locked, self._get, key)

    async def get_with_parents(self, key: str) -> tuple[Record, list[int]]:
        """Return the record of ``key`` and its parents' ids, nearest first.

        Raises:
            NotFound: No snapshot has that key.
        """
        return await anyio.to_thread.run_sync(self._locked, self._get_with_parents, key)

    async def create(
        self,
        kind: Kind,
        key: str,
        parent: str,
        labels: Mapping[str, str] | None,
        populate: Populate,
    ) -> tuple[Record, list[int]]:
        """Create an active or view snapshot whose directory ``populate`` fills.

        Returns:
            The new record and its parents' ids, nearest first.

        Raises:
            InvalidArgument: Empty key, bad labels, or a parent that is not
                committed.
            AlreadyExists: ``key`` is taken.
            NotFound: ``parent`` does not exist.
            Conflict: ``parent`` was removed and recreated meanwhile.
        """
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        checked = _check_labels(labels)
        return await anyio.to_thread.run_sync(self._create, kind, key, parent, checked, populate)

    async def commit(
        self,
        name: str,
        key: str,
        labels: Mapping[str, str] | None,
        measure: Callable[[Path], Usage],
    ) -> Record:
        """Turn active ``key`` into committed ``name``, recording ``measure(dir)``.

        Raises:
            InvalidArgument: Empty name or bad labels.
            NotFound: ``key`` does not exist.
            FailedPrecondition: ``key`` is not active.
            AlreadyExists: ``name`` is taken.
        """
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        checked = _check_labels(labels)
        return await anyio.to_thread.run_sync(self._commit, name, key, checked, measure)

    async def update(self, key: str, labels: Mapping[str, str]) -> Record:
        """Replace the labels of ``key``.

        Raises:
            NotFound: No snapshot has that key.
        """
        checked = _check_labels(labels)
        return await anyio.to_thread.run_sync(self._locked, self._update, key, checked)

    async def remove(self, key: str, *, sync: bool = True) -> None:
        """Delete the record of ``key``; delete its data now, or leave it to cleanup.

        Raises:
            NotFound: No snapshot has that key.
            FailedPrecondition: The snapshot has children.
        """
        trash = await anyio.to_thread.run_sync(self._locked, self._remove, key)
        # Crash tests: the record is gone and the data renamed to rm-*, not yet deleted.
        fault_point("snapshotter.remove.before-delete")
        if sync and trash is not None:
            await anyio.to_thread.run_sync(self._delete_tree, trash)

    async def walk(self, *filter_strings: str) -> list[Info]:
        """Return the info of the records matching ``filter_strings``, sorted by name.

        Raises:
            InvalidArgument: A filter is malformed.
        """
        # Parse first: a malformed filter fails without touching the database.
        parsed = filters.parse(filter_strings)
        records = await anyio.to_thread.run_sync(self._locked, self._all)
        return [
            r.info()
            for r in records
            if parsed.match(
                filters.adapt(
                    {"kind": str(r.kind), "name": r.key, "parent": r.parent, "labels": r.labels}
                )
            )
        ]

    async def cleanup(self) -> None:
        """Delete every directory under ``snapshots/`` that no record references."""
        trash = await anyio.to_thread.run_sync(self._locked, self._orphans)
        for path in trash:
            await anyio.to_thread.run_sync(self._delete_tree, path)

    async def close(self) -> None:
        """Close the database; later calls raise :class:`Unavailable`. Idempotent."""
        await anyio.to_thread.run_sync(self._close)

    # -- worker-thread helpers ---------------------------------------------

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened on first use; call with the lock held."""
        if self._closed:
            raise Unavailable(f"snapshot store {self.root} is closed")
        if self._db is None:
            self.snapshots_dir.mkdir(parents=True, exist_ok=True)
            self._db = record_db.connect(self.root / "metadata.db")
        return self._db

    @contextlib.contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        """A write transaction; rolled back if the body raises. Lock must be held."""
        db = self._conn()
        with record_db.sqlite_errors(what):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _row(self, db: sqlite3.Connection, key: str) -> Record | None:
        return record_db.by_key(db, key)

    def _get(self, key: str) -> Record:
        with record_db.sqlite_errors(f"stat {key!r}"):
            record = self._row(self._conn(), key)
        if record is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return record

    def _get_with_parents(self, key: str) -> tuple[Record, list[int]]:
        record = self._get(key)
        with record_db.sqlite_errors(f"parents of {key!r}"):
            ids = record_db.parent_ids(self._conn(), record.id)
        return record, ids

    def _check_new(self, db: sqlite3.Connection, key: str, parent: str) -> Record | None:
        if self._row(db, key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        if not parent:
            return None
        parent_record = self._row(db, parent)
        if parent_record is None:
            raise NotFound(f"parent snapshot {parent!r} does not exist")
        if parent_record.kind is not Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
        return parent_record

    def _create(
        self, kind: Kind, key: str, parent: str, labels: dict[str, str], populate: Populate
    ) -> tuple[Record, list[int]]:
        # Check before the (possibly slow) populate so that errors come early;
        # check again inside the insert because the lock was released meanwhile.
        with self._lock:
            parent_record = self._check_new(self._conn(), key, parent)
            parent_ids: list[int] = []
            if parent_record is not None:
                parent_ids = [parent_record.id, *self._get_with_parents(parent)[1]]
            temp = self.snapshots_dir / f"new-{os.urandom(8).hex()}"
            temp.mkdir()
            self._building.add(temp.name)
        try:
            populate(temp, [self.path(i) for i in parent_ids])
            with self._lock, self._tx(f"create {key!r}") as db:
                again = self._check_new(db, key, parent)
                if (again.id if again else None) != (parent_ids[0] if parent_ids else None):
                    # Removed and committed anew while we copied: our copy is stale.
                    raise Conflict(f"parent {parent!r} changed while {key!r} was being created")
                now = record_db.now()
                cursor = db.execute(
                    "INSERT INTO snapshots (key, kind, parent_id, labels, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key, str(kind), parent_ids[0] if parent_ids else None,
                     msgspec.json.encode(labels).decode(), now, now),
                )  # fmt: skip
                assert cursor.lastrowid is not None
                target = self.path(cursor.lastrowid)
                if target.exists():
                    # Left by a crash before an insert that was rolled back, so
                    # SQLite hands out its id again: nothing references it.
                    self._delete_tree(target)
                temp.rename(target)
                try:
                    _fsync_dir(self.snapshots_dir)
                    record = self._row(db, key)
                except BaseException:
                    target.rename(temp)
                    raise
            assert record is not None
            return record, parent_ids
        finally:
            with self._lock:
                self._building.discard(temp.name)
            if temp.exists():
                self._delete_tree(temp)

    def _commit(
        self, name: str, key: str, labels: dict[str, str], measure: Callable[[Path], Usage]
    ) -> Record:
        def check(db: sqlite3.Connection) -> Record:
            active = self._row(db, key)
            if active is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            if active.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is {active.kind}, not active")
            if self._row(db, name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            return active

        with self._lock:
            active = check(self._conn())
        # Measured outside the lock: a large layer takes a while to walk.
        usage = measure(self.path(active.id))
        with self._lock, self._tx(f"commit {key!r} as {name!r}") as db:
            active = check(db)
            now = record_db.now()
            db.execute(
                "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?,"
                " updated = ?, size = ?, inodes = ? WHERE id = ?",
                (name, msgspec.json.encode(labels).decode(), now, now,
                 usage.size, usage.inodes, active.id),
            )  # fmt: skip
            record = self._row(db, name)
        assert record is not None
        return record

    def _update(self, key: str, labels: dict[str, str]) -> Record:
        with self._tx(f"update {key!r}") as db:
            cursor = db.execute(
                "UPDATE snapshots SET labels = ?, updated = ? WHERE key = ?",
                (msgspec.json.encode(labels).decode(), record_db.now(), key),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"snapshot {key!r} does not exist")
            record = self._row(db, key)
        assert record is not None
        return record

    def _remove(self, key: str) -> Path | None:
        moved: tuple[Path, Path] | None = None
        try:
            with self._tx(f"remove {key!r}") as db:
                record = self._row(db, key)
                if record is None:
                    raise NotFound(f"snapshot {key!r} does not exist")
                children = [
                    row[0]
                    for row in db.execute(
                        "SELECT key FROM snapshots WHERE parent_id = ? ORDER BY key LIMIT 3",
                        (record.id,),
                    )
                ]
                if children:
                    raise FailedPrecondition(
                        f"snapshot {key!r} has children ({', '.join(map(repr, children))})"
                    )
                db.execute("DELETE FROM snapshots WHERE id = ?", (record.id,))
                source = self.path(record.id)
                if source.exists():
                    trash = self.snapshots_dir / f"rm-{record.id}-{os.urandom(4).hex()}"
                    source.rename(trash)
                    moved = (source, trash)
                    _fsync_dir(self.snapshots_dir)
        except BaseException:
            # The record survives a failed transaction, so its data must too.
            if moved is not None:
                moved[1].rename(moved[0])
            raise
        return None if moved is None else moved[1]

    def _all(self) -> list[Record]:
        with record_db.sqlite_errors("walk"):
            return record_db.every(self._conn())

    def _orphans(self) -> list[Path]:
        with record_db.sqlite_errors("cleanup"):
            live = {str(row[0]) for row in self._conn().execute("SELECT id FROM snapshots")}
        trash = []
        for entry in os.scandir(self.snapshots_dir):
            if entry.name in live or entry.name in self._building:
                continue
            path = Path(entry.path)
            if not entry.name.startswith("rm-"):
                # Renamed under the lock so that a create reusing this id
                # cannot race with the deletion that follows outside it.
                renamed = self.snapshots_dir / f"rm-{entry.name}-{os.urandom(4).hex()}"
                path.rename(renamed)
                path = renamed
            trash.append(path)
        return trash

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

