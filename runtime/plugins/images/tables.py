"""The image store's table and what the garbage collector reads from it.

An image is a root unless its ``containerd.io/gc.expire`` time passed; it keeps
its target (the root descriptor's blob) and what its labels name.
"""

from __future__ import annotations

import json
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
    label_edges,
    labels_of,
)
from runtime.plugins.metadata.api import Schema

__all__ = ["IMAGES", "ImageSource", "LoadedImages"]

IMAGES = Schema(
    "images",
    (
        """
        CREATE TABLE IF NOT EXISTS images (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            name TEXT NOT NULL,
            target TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )
        """,
    ),
    held=(("images", "images"),),
)


def target_digest(raw: str) -> str:
    """The digest of a stored target descriptor (JSON), ``""`` if unreadable."""
    try:
        target = json.loads(raw)
    except ValueError:
        return ""
    digest = target.get("digest", "") if isinstance(target, dict) else ""
    return digest if isinstance(digest, str) else ""


def _edges(ns: str, target: str, labels: dict[str, str]) -> Iterator[Edge]:
    if target:
        yield ("content", ns, target), True
    yield from label_edges(ns, labels)


class LoadedImages(msgspec.Struct, LoadedDefaults):
    """Every image of a read snapshot: ``(ns, name)`` to ``(target digest, labels JSON)``."""

    image_rows: dict[tuple[str, str], tuple[str, str]] = msgspec.field(default_factory=dict)

    def edges(self, node: Node) -> Iterator[Edge]:
        """See :class:`~runtime.plugins.gc.api.Records`."""
        _, ns, name = node
        row = self.image_rows.get((ns, name))
        if row is not None:
            yield from _edges(ns, row[0], labels_of(row[1]))

    def parent(self, node: Node) -> Node | None:
        """Images have none."""
        return None

    def roots(self, at: datetime) -> Iterator[Node]:
        """Images unless expired."""
        for (ns, name), (_, raw) in self.image_rows.items():
            if LABEL_EXPIRE not in raw or not expired(labels_of(raw), at):
                yield "images", ns, name

    def nodes(self) -> Iterator[Node]:
        """Every image."""
        for ns, name in self.image_rows:
            yield "images", ns, name

    def __len__(self) -> int:
        return len(self.image_rows)


class _LiveImages(Records):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def edges(self, node: Node) -> Iterator[Edge]:
        _, ns, name = node
        row = self.conn.execute(
            "SELECT target, labels FROM images WHERE namespace=? AND name=?", (ns, name)
        ).fetchone()
        if row is not None:
            yield from _edges(ns, target_digest(row[0]), labels_of(row[1]))

    def parent(self, node: Node) -> Node | None:
        return None


class ImageSource(Source):
    """The image records, as the collector sees them."""

    name = "images"
    logged = {"images": ("'images'", "NEW.name")}

    def owns(self, kind: str) -> bool:
        """``images``."""
        return kind == "images"

    def load(self, conn: sqlite3.Connection) -> LoadedImages:
        """Every image's target digest and labels."""
        return LoadedImages(
            {
                (r[0], r[1]): (target_digest(r[2]), r[3])
                for r in conn.execute("SELECT namespace, name, target, labels FROM images")
            }
        )

    def live(self, conn: sqlite3.Connection) -> Records:
        """Point queries on ``conn``."""
        return _LiveImages(conn)

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        """Delete the images."""
        rows = [(ns, key) for _, ns, key in nodes]
        sql = "DELETE FROM images WHERE namespace=? AND name=?"
        return {"images": conn.executemany(sql, rows).rowcount}

    def expiries(self, conn: sqlite3.Connection) -> Iterable[datetime]:
        """The images' expiry times."""
        return expiries_in(conn, "images")
