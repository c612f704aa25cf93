"""The lease store's tables and what the garbage collector reads from them.

A lease is a root until it is deleted or its ``containerd.io/gc.expire`` time
passes; it keeps the resources it holds (``lease_resources``), following their
references unless the lease is ``containerd.io/gc.flat``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime

import msgspec

from runtime.plugins.gc.api import (
    LABEL_EXPIRE,
    Edge,
    LoadedDefaults,
    Node,
    Records,
    Source,
    expired,
    expiries_in,
    is_flat,
    labels_of,
)
from runtime.plugins.metadata.schema import Schema

__all__ = ["LEASES", "LeaseSource", "LoadedLeases"]

LEASES = Schema(
    "leases",
    (
        """
        CREATE TABLE IF NOT EXISTS leases (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            id TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            PRIMARY KEY (namespace, id)
        );
        CREATE TABLE IF NOT EXISTS lease_resources (
            namespace TEXT NOT NULL,
            lease TEXT NOT NULL,
            type TEXT NOT NULL,
            resource TEXT NOT NULL,
            PRIMARY KEY (namespace, lease, type, resource),
            FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
        )
        """,
    ),
    # lease_resources first: its rows name the leases they belong to.
    released=("lease_resources", "leases"),
)

Held = list[tuple[str, str]]


def _lease_edges(ns: str, labels: dict[str, str], resources: Held) -> Iterator[Edge]:
    follow = not is_flat(labels)
    for type_, resource in resources:
        yield (type_, ns, resource), follow


class LoadedLeases(msgspec.Struct, LoadedDefaults):
    """Every lease of a read snapshot; labels stay JSON until a lease is expanded."""

    lease_rows: dict[tuple[str, str], str] = msgspec.field(default_factory=dict)
    resource_rows: dict[tuple[str, str], Held] = msgspec.field(default_factory=dict)

    def edges(self, node: Node) -> Iterator[Edge]:
        """See :class:`~runtime.plugins.gc.api.Records`."""
        _, ns, id = node
        raw = self.lease_rows.get((ns, id))
        if raw is not None:
            yield from _lease_edges(ns, labels_of(raw), self.resource_rows.get((ns, id), []))

    def parent(self, node: Node) -> Node | None:
        """Leases have none."""
        return None

    def roots(self, at: datetime) -> Iterator[Node]:
        """Leases unless expired."""
        for (ns, id), raw in self.lease_rows.items():
            # Substring test first: parsing every record's labels to find a rare label is waste.
            if LABEL_EXPIRE not in raw or not expired(labels_of(raw), at):
                yield "leases", ns, id

    def nodes(self) -> Iterator[Node]:
        """Every lease."""
        for ns, id in self.lease_rows:
            yield "leases", ns, id

    def __len__(self) -> int:
        return len(self.lease_rows)


class _LiveLeases(Records):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def edges(self, node: Node) -> Iterator[Edge]:
        _, ns, id = node
        row = self.conn.execute(
            "SELECT labels FROM leases WHERE namespace=? AND id=?", (ns, id)
        ).fetchone()
        if row is None:
            return
        held = self.conn.execute(
            "SELECT type, resource FROM lease_resources WHERE namespace=? AND lease=?", (ns, id)
        ).fetchall()
        yield from _lease_edges(ns, labels_of(row[0]), [(r[0], r[1]) for r in held])

    def parent(self, node: Node) -> Node | None:
        return None


class LeaseSource(Source):
    """The leases, as the collector sees them."""

    name = "leases"
    logged = {
        "leases": ("'leases'", "NEW.id"),
        # A resource newly held by a lease: log the lease, not the resource. The
        # rescue then reaches the resource through the lease's edges, with the
        # lease's rules: through a flat one, what the resource refers to is not
        # kept (logged as a root of its own, it was, for one collection only).
        "lease_resources": ("'leases'", "NEW.lease"),
    }

    def owns(self, kind: str) -> bool:
        """``leases``."""
        return kind == "leases"

    def load(self, conn: sqlite3.Connection) -> LoadedLeases:
        """Every lease and the resources each holds."""
        loaded = LoadedLeases()
        loaded.lease_rows = {
            (r[0], r[1]): r[2] for r in conn.execute("SELECT namespace, id, labels FROM leases")
        }
        for r in conn.execute("SELECT namespace, lease, type, resource FROM lease_resources"):
            loaded.resource_rows.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        return loaded

    def live(self, conn: sqlite3.Connection) -> Records:
        """Point queries on ``conn``."""
        return _LiveLeases(conn)

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        """Delete the leases and what they held."""
        rows = [(ns, key) for _, ns, key in nodes]
        conn.executemany("DELETE FROM lease_resources WHERE namespace=? AND lease=?", rows)
        return {"leases": conn.executemany("DELETE FROM leases WHERE namespace=? AND id=?", rows)
                .rowcount}

    def expiries(self, conn: sqlite3.Connection) -> Iterable[datetime]:
        """The leases' expiry times."""
        return expiries_in(conn, "leases")
