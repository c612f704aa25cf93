"""The content records' tables and what the garbage collector reads from them.

``content`` holds each namespace's blob records, ``ingests`` its uploads in
progress. A blob is a root when labelled ``containerd.io/gc.root`` and keeps
what its labels name. An ingest keeps the blob it expects; it lives until its
expiry if it has one, otherwise while its backend ingest exists (the backend
is asked once the mark's snapshot began, and again before the sweep).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from datetime import datetime

import msgspec

from runtime.core.errors import NotFound
from runtime.plugins.content.api import Store
from runtime.plugins.gc.api import (
    LABEL_ROOT,
    Edge,
    Node,
    Records,
    Source,
    is_root,
    label_edges,
    labels_of,
    parse_time,
)
from runtime.plugins.metadata.api import Schema

__all__ = ["CONTENT", "ContentSource", "LoadedContent"]

CONTENT = Schema(
    "content",
    (
        """
        CREATE TABLE IF NOT EXISTS content (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            digest TEXT NOT NULL,
            size INTEGER NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (namespace, digest)
        );
        CREATE INDEX IF NOT EXISTS content_by_digest ON content(digest);
        CREATE TABLE IF NOT EXISTS ingests (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            ref TEXT NOT NULL,
            backend_ref TEXT NOT NULL UNIQUE,
            expected TEXT NOT NULL DEFAULT '',
            expires_at TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (namespace, ref)
        )
        """,
    ),
    held=(("content", "blobs"),),
    released=("ingests",),
)


def _content_edges(ns: str, raw: str | None) -> Iterator[Edge]:
    labels = labels_of(raw)
    if labels:
        yield from label_edges(ns, labels)


def _ingest_edges(ns: str, expected: str) -> Iterator[Edge]:
    if expected:
        yield ("content", ns, expected), True


class LoadedContent(msgspec.Struct):
    """The blob records and ingests of a read snapshot, and the backend's uploads.

    Attributes:
        content_rows: ``(ns, digest)`` to labels (JSON).
        ingest_rows: ``(ns, ref)`` to ``(expected, expires_at, backend_ref)``.
        active: Backend refs of the uploads in progress (:meth:`observe`).
        store: The content backend, or None (no upload is then in progress).
    """

    content_rows: dict[tuple[str, str], str] = msgspec.field(default_factory=dict)
    ingest_rows: dict[tuple[str, str], tuple[str, str, str]] = msgspec.field(default_factory=dict)
    active: set[str] = msgspec.field(default_factory=set)
    store: Store | None = None

    def edges(self, node: Node) -> Iterator[Edge]:
        """See :class:`~runtime.plugins.gc.api.Records`."""
        kind, ns, key = node
        if kind == "content":
            raw = self.content_rows.get((ns, key))
            if raw is not None:
                yield from _content_edges(ns, raw)
        else:
            row = self.ingest_rows.get((ns, key))
            if row is not None:
                yield from _ingest_edges(ns, row[0])

    def parent(self, node: Node) -> Node | None:
        """Blobs and ingests have none."""
        return None

    def roots(self, at: datetime) -> Iterator[Node]:
        """Blobs labelled ``containerd.io/gc.root`` and live ingests."""
        for (ns, digest), raw in self.content_rows.items():
            if LABEL_ROOT in raw and is_root(labels_of(raw)):
                yield "content", ns, digest
        for (ns, ref), (_, expires_at, backend_ref) in self.ingest_rows.items():
            expiry = parse_time(expires_at)
            if (expiry > at) if expiry is not None else (backend_ref in self.active):
                yield "ingests", ns, ref

    def nodes(self) -> Iterator[Node]:
        """Every blob record and ingest."""
        for ns, digest in self.content_rows:
            yield "content", ns, digest
        for ns, ref in self.ingest_rows:
            yield "ingests", ns, ref

    def __len__(self) -> int:
        return len(self.content_rows) + len(self.ingest_rows)

    async def observe(self) -> None:
        """List the uploads in progress.

        Called after the snapshot began: an ingest it records was on disk first.
        """
        if self.store is not None:
            self.active = {s.ref for s in await self.store.list_statuses()}

    async def revived(self, candidates: Collection[Node]) -> set[Node]:
        """The candidate ingests whose backend appeared since :meth:`observe`.

        An ingest row has no timestamp a resumed upload would bump, so the
        change log cannot see it come back to life; the backend can.
        """
        revived: set[Node] = set()
        if self.store is None:
            return revived
        for node in [n for n in candidates if n[0] == "ingests"]:
            _, ns, ref = node
            _, expires_at, backend_ref = self.ingest_rows[(ns, ref)]
            if parse_time(expires_at) is not None:
                continue  # expired: the expiry decides, not the backend
            try:
                await self.store.status(backend_ref)
            except NotFound:
                continue
            revived.add(node)
        return revived


class _LiveContent(Records):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def edges(self, node: Node) -> Iterator[Edge]:
        kind, ns, key = node
        if kind == "content":
            sql = "SELECT labels FROM content WHERE namespace=? AND digest=?"
        else:
            sql = "SELECT expected FROM ingests WHERE namespace=? AND ref=?"
        row = self.conn.execute(sql, (ns, key)).fetchone()
        if row is None:
            return
        yield from _content_edges(ns, row[0]) if kind == "content" else _ingest_edges(ns, row[0])

    def parent(self, node: Node) -> Node | None:
        return None


class ContentSource(Source):
    """The blob records and ingests, as the collector sees them.

    Args:
        store: The content backend, asked which uploads are in progress.
    """

    name = "content"
    logged = {
        "content": ("'content'", "NEW.digest"),
        "ingests": ("'ingests'", "NEW.ref"),
    }

    def __init__(self, store: Store | None = None) -> None:
        self.store = store

    def owns(self, kind: str) -> bool:
        """``content`` and ``ingests``."""
        return kind in ("content", "ingests")

    def load(self, conn: sqlite3.Connection) -> LoadedContent:
        """Every blob record's labels, every ingest."""
        return LoadedContent(
            content_rows={
                (r[0], r[1]): r[2]
                for r in conn.execute("SELECT namespace, digest, labels FROM content")
            },
            ingest_rows={
                (r[0], r[1]): (r[2], r[3], r[4])
                for r in conn.execute(
                    "SELECT namespace, ref, expected, expires_at, backend_ref FROM ingests"
                )
            },
            store=self.store,
        )

    def live(self, conn: sqlite3.Connection) -> Records:
        """Point queries on ``conn``."""
        return _LiveContent(conn)

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        """Delete the blob records and ingests (their bytes go in the disk phase)."""
        sql = {
            "content": "DELETE FROM content WHERE namespace=? AND digest=?",
            "ingests": "DELETE FROM ingests WHERE namespace=? AND ref=?",
        }
        counts = {}
        for kind in sorted(sql):
            rows = [(ns, key) for k, ns, key in nodes if k == kind]
            if rows:
                counts[kind] = conn.executemany(sql[kind], rows).rowcount
        return counts

    def backend_refs(self, conn: sqlite3.Connection, backend: str) -> set[str]:
        """Blobs recorded or expected by an ingest (``content``), ingests' backend refs."""
        if backend == "content":
            rows = conn.execute(
                "SELECT digest FROM content UNION SELECT expected FROM ingests WHERE expected != ''"
            )
        elif backend == "ingests":
            rows = conn.execute("SELECT backend_ref FROM ingests")
        else:
            return set()
        return {r[0] for r in rows}

    def refers_to(self, conn: sqlite3.Connection, backend: str, key: str) -> bool:
        """Whether a record or ingest refers to blob ``key``, or an ingest to ingest ``key``."""
        queries: tuple[str, ...]
        if backend == "content":
            queries = (
                "SELECT 1 FROM content WHERE digest=? LIMIT 1",
                "SELECT 1 FROM ingests WHERE expected=? LIMIT 1",
            )
        elif backend == "ingests":
            queries = ("SELECT 1 FROM ingests WHERE backend_ref=?",)
        else:
            return False
        return any(conn.execute(sql, (key,)).fetchone() is not None for sql in queries)
