"""The SQLite database: WAL, migrations per owner, and one writer at a time.

The database belongs to no store: each store declares its tables as a
:class:`Schema` in its own package and registers it (with the garbage
collector's :class:`~runtime.plugins.gc.api.Source` over them) when it starts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from runtime.core.errors import MoorageError, ResourceExhausted, Unavailable
from runtime.plugins.gc.api import Source
from runtime.plugins.metadata.lease_tables import LEASES, LeaseSource
from runtime.plugins.metadata.schema import NAMESPACES, Schema

__all__ = ["SCHEMA_VERSION", "Database", "Schema", "sqlite_errors"]

T = TypeVar("T")

#: The layout version of the file itself (``PRAGMA user_version``); never lowered.
#: 1: one list of migrations held every table. 2: each store migrates its own
#: tables, and ``schema_owners`` records each owner's version.
SCHEMA_VERSION = 2

_OWNERS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_owners "
    "(owner TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
# The owners of version 1's tables: a file from before the split records them
# at their first version, which created exactly those tables.
_VERSION_1_OWNERS = ("namespaces", "content", "images", "containers", "snapshots", "leases")


@contextmanager
def sqlite_errors() -> Iterator[None]:
    """Translate sqlite3 failures into the error vocabulary at the boundary."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise Unavailable(f"metadata database busy: {text}") from exc
        if "full" in text:
            raise ResourceExhausted(f"metadata database: {text}") from exc
        raise MoorageError(f"metadata database: {text}") from exc
    except sqlite3.DatabaseError as exc:
        raise MoorageError(f"metadata database: {exc}") from exc


class Database:
    """One SQLite file; statements run in worker threads, writers one at a time.

    Every multi-step change goes through :meth:`write`, which is one
    ``BEGIN IMMEDIATE`` transaction: a crash at any point leaves the previous
    or the next consistent state, never a mix.

    Reads have a connection of their own, each :meth:`read` one read
    transaction on it: in WAL mode it sees every commit made before it began
    and never waits for a writer, in particular not for the ``fsync`` that
    ends a commit (with many requests at once, reads queued behind those
    were most of a request's time).
    """

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._schemas: dict[str, Schema] = {}
        self._sources: dict[str, Source] = {}

    def open(self) -> None:
        """Open (creating if needed), bring the file to :data:`SCHEMA_VERSION`, create namespaces.

        Schemas registered before the open are migrated now.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite_errors():
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
            self._upgrade_layout(conn)
        # The database's own tables: every store writes to them (ensure_namespace, attach).
        self.register(NAMESPACES)
        self.register(LEASES, LeaseSource())
        for schema in list(self._schemas.values()):
            self._migrate(schema)
        with sqlite_errors():
            reader = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            reader.row_factory = sqlite3.Row
            self._reader = reader

    def _upgrade_layout(self, conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise MoorageError(
                f"{self.path}: schema version {current} is newer than this daemon's "
                f"{SCHEMA_VERSION}; refusing to downgrade"
            )
        if current == SCHEMA_VERSION:
            return
        with _transaction(conn):
            conn.execute(_OWNERS_TABLE)
            if current == 1:
                conn.executemany(
                    "INSERT OR IGNORE INTO schema_owners(owner, version) VALUES (?, 1)",
                    [(owner,) for owner in _VERSION_1_OWNERS],
                )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def register(self, schema: Schema, source: Source | None = None) -> None:
        """Own ``schema``'s tables: migrate them now (or at :meth:`open`); collect via ``source``.

        Registering the same schema again (one per snapshotter, say) changes nothing.

        Raises:
            MoorageError: Another schema under that owner, or the file holds a
                newer version of the owner's tables than ``schema`` knows.
        """
        known = self._schemas.get(schema.owner)
        if known is not None and known != schema:
            raise MoorageError(f"two schemas registered for owner {schema.owner!r}")
        self._schemas[schema.owner] = schema
        if source is not None:
            self._sources.setdefault(schema.owner, source)
        if self._conn is not None and known is None:
            self._migrate(schema)

    def _migrate(self, schema: Schema) -> None:
        with self._lock, sqlite_errors(), _transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT version FROM schema_owners WHERE owner=?", (schema.owner,)
            ).fetchone()
            current = 0 if row is None else int(row[0])
            if current > schema.version:
                raise MoorageError(
                    f"{self.path}: the tables of {schema.owner!r} are at version {current}, "
                    f"newer than this daemon's {schema.version}; refusing to downgrade"
                )
            for migration in schema.migrations[current:]:
                for statement in migration.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if current < schema.version:
                conn.execute(
                    "INSERT OR REPLACE INTO schema_owners(owner, version) VALUES (?, ?)",
                    (schema.owner, schema.version),
                )

    @property
    def schemas(self) -> list[Schema]:
        """The schemas registered in this process, by owner (each asked what a namespace holds)."""
        return sorted(self._schemas.values(), key=lambda schema: schema.owner)

    @property
    def sources(self) -> list[Source]:
        """The garbage collector's sources, one per owner that registered one."""
        return list(self._sources.values())

    def owners_not_registered(self) -> list[str]:
        """Owners with tables in the file whose store has not registered in this process.

        Their records are invisible to the collector until they do: collecting
        then could delete what those records keep.
        """
        return self.read_sync(self.owners_not_registered_in)

    def owners_not_registered_in(self, conn: sqlite3.Connection) -> list[str]:
        """:meth:`owners_not_registered`, on ``conn`` (inside a :meth:`read` or :meth:`write`)."""
        recorded = [r[0] for r in conn.execute("SELECT owner FROM schema_owners")]
        return sorted(set(recorded) - set(self._schemas))

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection (for use inside :meth:`read`/:meth:`write` callables)."""
        if self._conn is None:
            raise Unavailable("metadata database is not open")
        return self._conn

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` for reading, in the calling thread: one consistent snapshot.

        ``fn`` must not write: its connection is the readers'.
        """
        reader = self._reader
        if reader is None:
            raise Unavailable("metadata database is not open")
        with self._read_lock, sqlite_errors():
            # Deferred: a read transaction from the first SELECT to the COMMIT.
            reader.execute("BEGIN")
            try:
                return fn(reader)
            finally:
                reader.execute("COMMIT")

    def write_sync(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn(conn)`` inside one transaction, in the calling thread.

        ``durable=False`` commits without syncing the WAL (``synchronous=NORMAL``
        for that commit): a crash of the daemon cannot lose it, a power loss can,
        until the next durable commit or checkpoint syncs the WAL with it. Only
        for changes that describe what a reboot ends anyway (a task's pid, a
        pod's network namespace); a later durable commit never survives
        without an earlier lazy one, the WAL being replayed in order.
        """
        lazy = not durable and self.synchronous in ("FULL", "EXTRA")
        with self._lock, sqlite_errors():
            conn = self.conn
            if lazy:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with _transaction(conn):
                    return fn(conn)
            finally:
                if lazy:
                    conn.execute(f"PRAGMA synchronous={self.synchronous}")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` for reading in a worker thread."""
        return await anyio.to_thread.run_sync(self.read_sync, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn(conn)`` as one transaction in a worker thread (see :meth:`write_sync`)."""
        if durable:
            return await anyio.to_thread.run_sync(self.write_sync, fn)
        return await anyio.to_thread.run_sync(lambda: self.write_sync(fn, durable=False))

    def close(self) -> None:
        """Checkpoint and close."""
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

