"""The snapshot records' table and what the garbage collector reads from it.

One table holds the records of every snapshotter. A snapshot is a root when
labelled ``containerd.io/gc.root``; it keeps its parent (even through a flat
lease: a snapshot without its parent cannot be mounted) and what its labels
name. The disk phase asks which backend keys the records use.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from datetime import datetime

import msgspec

from runtime.plugins.gc.api import (
    LABEL_ROOT,
    Edge,
    LoadedDefaults,
    Node,
    Records,
    Source,
    is_root,
    label_edges,
    labels_of,
)
from runtime.plugins.metadata.api import Schema
from runtime.plugins.snapshots.api import Kind, SnapshotCount

__all__ = ["SNAPSHOTS", "LoadedSnapshots", "SnapshotSource", "count_snapshots"]

class _SnapshotSchema(Schema, frozen=True):
    """The snapshots table; a namespace's snapshots are named per snapshotter."""

    def holds(self, conn: sqlite3.Connection, namespace: str) -> list[str]:
        """``'2 snapshots on "native" snapshotter'``, one entry per snapshotter."""
        rows = conn.execute(
            "SELECT snapshotter, count(*) FROM snapshots WHERE namespace=? "
            "GROUP BY snapshotter ORDER BY snapshotter",
            (namespace,),
        )
        return [f'{count} snapshots on "{snapshotter}" snapshotter' for snapshotter, count in rows]


SNAPSHOTS = _SnapshotSchema(
    "snapshots",
    (
        """
        CREATE TABLE IF NOT EXISTS snapshots (
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
        CREATE INDEX IF NOT EXISTS snapshots_by_backend ON snapshots(snapshotter, backend_key)
        """,
    ),
)

_PREFIX = "snapshots/"
# (ns, snapshotter, key) of a node.
Key = tuple[str, str, str]


def _key(node: Node) -> Key:
    kind, ns, key = node
    return ns, kind[len(_PREFIX) :], key


def _edges(node: Node, parent: str, labels: dict[str, str]) -> Iterator[Edge]:
    kind, ns, _ = node
    if parent:
        yield (kind, ns, parent), True
    yield from label_edges(ns, labels)


def _parent(node: Node, parent: str | None) -> Node | None:
    return (node[0], node[1], parent) if parent else None


class LoadedSnapshots(msgspec.Struct, LoadedDefaults):
    """Every snapshot record of a read snapshot: ``(ns, snapshotter, key)`` to parent, labels."""

    snapshot_rows: dict[Key, tuple[str, str]] = msgspec.field(default_factory=dict)

    def edges(self, node: Node) -> Iterator[Edge]:
        """See :class:`~runtime.plugins.gc.api.Records`."""
        row = self.snapshot_rows.get(_key(node))
        if row is not None:
            yield from _edges(node, row[0], labels_of(row[1]))

    def parent(self, node: Node) -> Node | None:
        """The parent snapshot."""
        row = self.snapshot_rows.get(_key(node))
        return None if row is None else _parent(node, row[0])

    def roots(self, at: datetime) -> Iterator[Node]:
        """Snapshots labelled ``containerd.io/gc.root``."""
        for (ns, snapshotter, key), (_, raw) in self.snapshot_rows.items():
            if LABEL_ROOT in raw and is_root(labels_of(raw)):
                yield f"{_PREFIX}{snapshotter}", ns, key

    def nodes(self) -> Iterator[Node]:
        """Every snapshot record."""
        for ns, snapshotter, key in self.snapshot_rows:
            yield f"{_PREFIX}{snapshotter}", ns, key

    def __len__(self) -> int:
        return len(self.snapshot_rows)


class _LiveSnapshots(Records):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _row(self, node: Node) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT parent, labels FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
            _key(node),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def edges(self, node: Node) -> Iterator[Edge]:
        row = self._row(node)
        if row is not None:
            yield from _edges(node, row[0], labels_of(row[1]))

    def parent(self, node: Node) -> Node | None:
        row = self._row(node)
        return None if row is None else _parent(node, row[0])


class SnapshotSource(Source):
    """The snapshot records of every snapshotter, as the collector sees them."""

    name = "snapshots"
    logged = {"snapshots": ("'snapshots/' || NEW.snapshotter", "NEW.key")}

    def owns(self, kind: str) -> bool:
        """``snapshots/<snapshotter>``."""
        return kind.startswith(_PREFIX) and len(kind) > len(_PREFIX)

    def load(self, conn: sqlite3.Connection) -> LoadedSnapshots:
        """Every record's parent and labels."""
        return LoadedSnapshots(
            {
                (r[0], r[1], r[2]): (r[3], r[4])
                for r in conn.execute(
                    "SELECT namespace, snapshotter, key, parent, labels FROM snapshots"
                )
            }
        )

    def live(self, conn: sqlite3.Connection) -> Records:
        """Point queries on ``conn``."""
        return _LiveSnapshots(conn)

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        """Delete the records, per snapshotter."""
        by_kind: dict[str, list[Key]] = {}
        for node in nodes:
            by_kind.setdefault(node[0], []).append(_key(node))
        sql = "DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?"
        return {k: conn.executemany(sql, keys).rowcount for k, keys in sorted(by_kind.items())}

    def backend_refs(self, conn: sqlite3.Connection, backend: str) -> set[str]:
        """The backend keys the records of snapshotter ``snapshots/<name>`` use."""
        if not self.owns(backend):
            return set()
        sql = "SELECT backend_key FROM snapshots WHERE snapshotter=?"
        return {r[0] for r in conn.execute(sql, (backend[len(_PREFIX) :],))}

    def refers_to(self, conn: sqlite3.Connection, backend: str, key: str) -> bool:
        """Whether a record uses backend key ``key`` of ``snapshots/<name>``."""
        if not self.owns(backend):
            return False
        sql = "SELECT 1 FROM snapshots WHERE snapshotter=? AND backend_key=?"
        return conn.execute(sql, (backend[len(_PREFIX) :], key)).fetchone() is not None


def count_snapshots(conn: sqlite3.Connection) -> list[SnapshotCount]:
    """The records per snapshotter, namespace and kind, sorted."""
    rows = conn.execute(
        "SELECT snapshotter, namespace, kind, COUNT(*) FROM snapshots "
        "GROUP BY snapshotter, namespace, kind ORDER BY 1, 2, 3")
    return [SnapshotCount(snapshotter=r[0], namespace=r[1], kind=Kind(r[2]), count=r[3])
            for r in rows]
