"""The container store's table and what the garbage collector reads from it.

Every container is a root, and never collected. It keeps its snapshot and what
its labels name, as in containerd; not its image's content. That edge would
come from the image's record, not the container's: an expired image is deleted
in the same pass that keeps its content, and the next pass, no longer finding
the image, would delete the content. An edge read from the node's own record
is what makes one pass reach the fixed point.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

import msgspec

from runtime.plugins.gc.api import Edge, LoadedDefaults, Node, Records, Source, label_edges
from runtime.plugins.metadata.api import Schema

__all__ = ["CONTAINERS", "ContainerSource", "LoadedContainers"]

CONTAINERS = Schema(
    "containers",
    (
        """
        CREATE TABLE IF NOT EXISTS containers (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            id TEXT NOT NULL,
            record TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (namespace, id)
        )
        """,
    ),
    held=(("containers", "containers"),),
)


def _edges(ns: str, raw: str) -> Iterator[Edge]:
    """The references of one record's JSON; missing or odd fields refer to nothing."""
    try:
        record: Any = json.loads(raw)
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        return

    def text(name: str) -> str:
        value = record.get(name, "")
        return value if isinstance(value, str) else ""

    snapshotter, key = text("snapshotter"), text("snapshot_key")
    if snapshotter and key:
        yield (f"snapshots/{snapshotter}", ns, key), True
    labels = record.get("labels") or {}
    if isinstance(labels, dict):
        yield from label_edges(ns, labels)


class LoadedContainers(msgspec.Struct, LoadedDefaults):
    """Every container record of a read snapshot (JSON)."""

    container_rows: dict[tuple[str, str], str] = msgspec.field(default_factory=dict)

    def edges(self, node: Node) -> Iterator[Edge]:
        """See :class:`~runtime.plugins.gc.api.Records`."""
        _, ns, id = node
        raw = self.container_rows.get((ns, id))
        if raw is not None:
            yield from _edges(ns, raw)

    def parent(self, node: Node) -> Node | None:
        """Containers have none."""
        return None

    def roots(self, at: datetime) -> Iterator[Node]:
        """Every container."""
        for ns, id in self.container_rows:
            yield "containers", ns, id

    def nodes(self) -> Iterator[Node]:
        """None: containers are deleted by their owner, never collected."""
        return iter(())

    def __len__(self) -> int:
        return len(self.container_rows)


class _LiveContainers(Records):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def edges(self, node: Node) -> Iterator[Edge]:
        _, ns, id = node
        row = self.conn.execute(
            "SELECT record FROM containers WHERE namespace=? AND id=?", (ns, id)
        ).fetchone()
        if row is not None:
            yield from _edges(ns, row[0])

    def parent(self, node: Node) -> Node | None:
        return None


class ContainerSource(Source):
    """The container records, as the collector sees them."""

    name = "containers"
    logged = {"containers": ("'containers'", "NEW.id")}

    def owns(self, kind: str) -> bool:
        """``containers``."""
        return kind == "containers"

    def load(self, conn: sqlite3.Connection) -> LoadedContainers:
        """Every container record."""
        rows = conn.execute("SELECT namespace, id, record FROM containers")
        return LoadedContainers({(r[0], r[1]): r[2] for r in rows})

    def live(self, conn: sqlite3.Connection) -> Records:
        """Point queries on ``conn``."""
        return _LiveContainers(conn)

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        """Nothing: containers are never collected."""
        return {}
