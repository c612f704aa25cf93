"""A backend's snapshot records in SQLite: the table, its queries, rows as :class:`Record`.

One row per snapshot of one backend (``<root>/metadata.db``, see
:mod:`.storage`), found by key; ``parent_id`` links a snapshot to the
committed snapshot below it. Times are stored as microseconds since the epoch,
which round-trip exactly through :class:`~datetime.datetime`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from runtime.core.errors import AlreadyExists, FailedPrecondition, MoorageError, ResourceExhausted
from runtime.plugins.snapshots.api import Kind
from runtime.plugins.snapshots.record import Record

__all__ = ["by_key", "connect", "every", "now", "parent_ids", "sqlite_errors"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    key       TEXT    NOT NULL UNIQUE,
    kind      TEXT    NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent_id INTEGER REFERENCES snapshots (id) ON DELETE RESTRICT,
    labels    TEXT    NOT NULL,
    created   INTEGER NOT NULL,
    updated   INTEGER NOT NULL,
    size      INTEGER NOT NULL DEFAULT 0,
    inodes    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots (parent_id);
"""

_SELECT = """
SELECT s.id, s.key, s.kind, COALESCE(p.key, ''), s.parent_id, s.labels,
       s.created, s.updated, s.size, s.inodes
FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id
"""

# Parents of one snapshot, nearest first: what overlay's lowerdir needs.
_CHAIN = """
WITH RECURSIVE chain (id, parent_id, depth) AS (
    SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
    UNION ALL
    SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id
)
SELECT id FROM chain WHERE depth > 0 ORDER BY depth
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now() -> int:
    """Now, as stored: microseconds since the epoch (an exact round trip through datetime)."""
    return (datetime.now(UTC) - _EPOCH) // timedelta(microseconds=1)


def _time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@contextlib.contextmanager
def sqlite_errors(what: str) -> Iterator[None]:
    """Translate sqlite3 errors into the domain vocabulary at this boundary."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc):
            raise AlreadyExists(f"{what}: already exists") from exc
        raise FailedPrecondition(f"{what}: {exc}") from exc
    except sqlite3.OperationalError as exc:
        if "full" in str(exc):
            raise ResourceExhausted(f"{what}: {exc}") from exc
        raise MoorageError(f"{what}: {exc}") from exc
    except sqlite3.Error as exc:
        raise MoorageError(f"{what}: {exc}") from exc


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the records at ``path``."""
    with sqlite_errors(f"open {path}"):
        # Autocommit mode: transactions are explicit BEGIN IMMEDIATE in the store.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed snapshot must survive power loss, since the
        # directory rename it describes already happened.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(SCHEMA)
    return db


def by_key(db: sqlite3.Connection, key: str) -> Record | None:
    """The record of ``key``, or None."""
    row = db.execute(_SELECT + " WHERE s.key = ?", (key,)).fetchone()
    return None if row is None else _record(row)


def parent_ids(db: sqlite3.Connection, id: int) -> list[int]:
    """The ids of snapshot ``id``'s parents, nearest first."""
    return [row[0] for row in db.execute(_CHAIN, (id,))]


def every(db: sqlite3.Connection) -> list[Record]:
    """Every record, by key."""
    return [_record(r) for r in db.execute(_SELECT + " ORDER BY s.key")]


def _record(row: Sequence[Any]) -> Record:
    id_, key, kind, parent, parent_id, labels, created, updated, size, inodes = row
    return Record(
        id=id_,
        key=key,
        kind=Kind(kind),
        parent=parent,
        parent_id=parent_id,
        labels=msgspec.json.decode(labels, type=dict[str, str]),
        created=_time(created),
        updated=_time(updated),
        size=size,
        inodes=inodes,
    )
