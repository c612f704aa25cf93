"""The SQLite database: WAL, a schema version, migrations, and one writer at a time."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from runtime.core.errors import MoorageError, ResourceExhausted, Unavailable

__all__ = ["SCHEMA_VERSION", "Database", "sqlite_errors"]

T = TypeVar("T")

# Each entry migrates from version i to i+1. Records are namespaced by a
# column; labels are JSON objects because every reader filters them in Python.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE content (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, digest)
    );
    CREATE INDEX content_by_digest ON content(digest);
    CREATE TABLE ingests (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        ref TEXT NOT NULL,
        backend_ref TEXT NOT NULL UNIQUE,
        expected TEXT NOT NULL DEFAULT '',
        expires_at TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (namespace, ref)
    );
    CREATE TABLE images (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        name TEXT NOT NULL,
        target TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, name)
    );
    CREATE TABLE containers (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE snapshots (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        backend_key TEXT NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key)
    );
    CREATE INDEX snapshots_by_backend ON snapshots(snapshotter, backend_key);
    CREATE TABLE leases (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        resource TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, resource),
        FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


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
    """

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open (creating if needed) and migrate to :data:`SCHEMA_VERSION`."""
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
            self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise MoorageError(
                f"{self.path}: schema version {current} is newer than this daemon's "
                f"{SCHEMA_VERSION}; refusing to downgrade"
            )
        for version in range(current, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection (for use inside :meth:`read`/:meth:`write` callables)."""
        if self._conn is None:
            raise Unavailable("metadata database is not open")
        return self._conn

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` for reading, in the calling thread."""
        with self._lock, sqlite_errors():
            return fn(self.conn)

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside one transaction, in the calling thread."""
        with self._lock, sqlite_errors():
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` for reading in a worker thread."""
        return await anyio.to_thread.run_sync(self.read_sync, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` as one transaction in a worker thread."""
        return await anyio.to_thread.run_sync(self.write_sync, fn)

    def close(self) -> None:
        """Checkpoint and close."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
