"""The collector reads records only through the Sources the stores register.

A store unknown to the collector (``pins``: a table of this test's own, with a
Source written against :mod:`runtime.plugins.gc.api` alone) takes part in
collection as the built-in stores do: its records are roots, their references
keep blobs, its writes during a mark are seen, and its expired records go.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from runtime.core.errors import FailedPrecondition
from runtime.plugins.gc import collector as collector_module
from runtime.plugins.gc.api import (
    Edge,
    GCReport,
    Loaded,
    Node,
    Records,
    Source,
)
from runtime.plugins.metadata.api import Schema, ensure_namespace
from runtime.plugins.metadata.db import Database
from tests.plugins.gc.conftest import World

MakeWorld = Callable[[Path], AbstractAsyncContextManager[World]]

PINS = Schema(
    "pins",
    (
        "CREATE TABLE IF NOT EXISTS pins (namespace TEXT NOT NULL, name TEXT NOT NULL, "
        "digest TEXT NOT NULL, PRIMARY KEY (namespace, name))",
    ),
)


@dataclass
class LoadedPins(Loaded):
    rows: dict[tuple[str, str], str] = field(default_factory=dict)

    def edges(self, node: Node) -> Iterator[Edge]:
        digest = self.rows.get((node[1], node[2]))
        if digest:
            yield ("content", node[1], digest), True

    def parent(self, node: Node) -> Node | None:
        return None

    def roots(self, at: datetime) -> Iterator[Node]:
        # A pin is a root unless its digest is empty (an "expired" pin).
        return (("pins", ns, name) for (ns, name), digest in self.rows.items() if digest)

    def nodes(self) -> Iterator[Node]:
        return (("pins", ns, name) for ns, name in self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class LivePins(Records):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def edges(self, node: Node) -> Iterator[Edge]:
        row = self.conn.execute(
            "SELECT digest FROM pins WHERE namespace=? AND name=?", (node[1], node[2])
        ).fetchone()
        if row is not None and row[0]:
            yield ("content", node[1], row[0]), True

    def parent(self, node: Node) -> Node | None:
        return None


class PinSource(Source):
    name = "pins"
    logged = {"pins": ("'pins'", "NEW.name")}

    def owns(self, kind: str) -> bool:
        return kind == "pins"

    def load(self, conn: sqlite3.Connection) -> LoadedPins:
        return LoadedPins({(r[0], r[1]): r[2] for r in conn.execute("SELECT * FROM pins")})

    def live(self, conn: sqlite3.Connection) -> Records:
        return LivePins(conn)

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        rows = [(ns, name) for _, ns, name in nodes]
        sql = "DELETE FROM pins WHERE namespace=? AND name=?"
        return {"pins": conn.executemany(sql, rows).rowcount}


async def pin(db: Database, ns: str, name: str, digest: str) -> None:
    def write(conn: sqlite3.Connection) -> None:
        ensure_namespace(conn, ns)
        conn.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?)", (ns, name, digest))

    await db.write(write)


async def pins(db: Database) -> set[str]:
    return await db.read(lambda c: {r[0] for r in c.execute("SELECT name FROM pins")})


async def test_gc_keeps_what_any_source_references(make_world: MakeWorld, tmp_path: Path) -> None:
    async with make_world(tmp_path) as world:
        world.db.register(PINS, PinSource())
        pinned = await world.blob("a", b"pinned")
        loose = await world.blob("a", b"loose")
        await pin(world.db, "a", "keep", pinned)

        await world.collector.collect()
        state = await world.state()
        assert ("a", pinned) in state.content and pinned in state.blobs
        assert ("a", loose) not in state.content and loose not in state.blobs

        # The source decides its own roots: an "expired" pin goes, and its blob with it.
        await pin(world.db, "a", "keep", "")
        report = await world.collector.collect()
        state = await world.state()
        assert ("a", pinned) not in state.content and pinned not in state.blobs
        assert await pins(world.db) == set()
        assert report.removed["pins"].records == 1


async def test_a_sources_writes_during_the_mark_are_rescued(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world:
        world.db.register(PINS, PinSource())
        blob = await world.blob("a", b"pinned late")
        marked = await world.collector.mark()
        assert ("content", "a", blob) in marked.candidates
        # Logged through the source's own trigger expressions, then rescued in the pause.
        await pin(world.db, "a", "late", blob)
        result = await world.collector.sweep(marked, GCReport(started_at=marked.since.wall))
        await world.collector.disk.run(marked.since, GCReport(started_at=marked.since.wall))
        assert result.rescued >= 1
        state = await world.state()
        assert ("a", blob) in state.content and blob in state.blobs


async def test_gc_refuses_while_a_store_with_records_has_not_registered(
    make_world: MakeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_world(tmp_path) as world:
        world.db.register(PINS, PinSource())
        blob = await world.blob("a", b"pinned")
        await pin(world.db, "a", "keep", blob)
    monkeypatch.setattr(collector_module, "OWNERS_WAIT", 0.1)
    # The daemon starts again, but the store owning "pins" does not (yet).
    async with make_world(tmp_path) as world:
        with pytest.raises(FailedPrecondition, match="not running: pins"):
            await world.collector.collect()
        state = await world.state()
        assert ("a", blob) in state.content and blob in state.blobs
        world.db.register(PINS, PinSource())
        await world.collector.collect()
        assert blob in (await world.state()).blobs
