"""Deleting a namespace: each registered store says what the namespace still holds.

The namespace store reads no other store's table: it asks every schema
registered with the database (:meth:`Schema.holds`) and lets each drop the
rows that go with the namespace (:meth:`Schema.release`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.core.errors import FailedPrecondition
from runtime.plugins.containers.store import SqliteContainerStore
from runtime.plugins.content.local.service import ContentService
from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.images.store import ImageStore
from runtime.plugins.metadata.api import Schema
from runtime.plugins.metadata.db import Database
from runtime.plugins.metadata.leases import LeaseStore
from runtime.plugins.metadata.namespaces import NamespaceStore
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.service.namespaced import NamespacedSnapshotter

STAMP = "2024-01-01T00:00:00+00:00"
DIGEST = "sha256:" + "0" * 64
PINS = Schema(
    "pins",
    ("CREATE TABLE pins (namespace TEXT NOT NULL REFERENCES namespaces(name), key TEXT)",),
    held=(("pins", "pins"),),
)


def publish(namespace: str, topic: str, event: object) -> None:
    pass


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "meta.db")
    database.open()
    yield database
    database.close()


def insert(db: Database, sql: str, *args: object) -> None:
    db.write_sync(lambda c: c.execute(sql, args))


def count(db: Database, table: str) -> int:
    return int(db.read_sync(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))


async def test_namespace_delete_asks_each_store_what_it_holds(db: Database) -> None:
    """A store the namespace code has never heard of keeps a namespace by registering."""
    namespaces = NamespaceStore(db, publish)
    await namespaces.create("busy")
    db.register(PINS)
    insert(db, "INSERT INTO pins VALUES ('busy', 'a')")
    insert(db, "INSERT INTO pins VALUES ('busy', 'b')")
    with pytest.raises(FailedPrecondition) as info:
        await namespaces.delete("busy")
    assert str(info.value) == "namespace 'busy' must be empty, but it still has: 2 pins"
    assert [ns.name for ns in await namespaces.list()] == ["busy"]


async def test_namespace_delete_lists_every_stores_holdings_by_owner(
    db: Database, tmp_path: Path
) -> None:
    ImageStore(db, publish)
    SqliteContainerStore(db, publish)
    ContentService(ContentStore(tmp_path / "content"), db, publish)
    NamespacedSnapshotter("native", NativeSnapshotter(tmp_path / "native"), db, publish)
    namespaces = NamespaceStore(db, publish)
    await namespaces.create("busy")
    insert(db, "INSERT INTO content VALUES ('busy', ?, 3, '{}', ?, ?)", DIGEST, STAMP, STAMP)
    insert(db, "INSERT INTO images VALUES ('busy', 'img', '{}', '{}', ?, ?)", STAMP, STAMP)
    insert(db, "INSERT INTO containers VALUES ('busy', 'c1', '{}', ?, ?)", STAMP, STAMP)
    for key in ("k1", "k2"):
        insert(db, "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, kind, "
               "created_at, updated_at) VALUES ('busy', 'native', ?, ?, 'active', ?, ?)",
               key, key, STAMP, STAMP)
    with pytest.raises(FailedPrecondition) as info:
        await namespaces.delete("busy")
    assert str(info.value) == (
        "namespace 'busy' must be empty, but it still has: 1 containers, 1 blobs, 1 images, "
        '2 snapshots on "native" snapshotter'
    )


async def test_namespace_delete_releases_leases_and_ingests_with_it(
    db: Database, tmp_path: Path
) -> None:
    ContentService(ContentStore(tmp_path / "content"), db, publish)
    namespaces = NamespaceStore(db, publish)
    await namespaces.create("going")
    await LeaseStore(db, publish).create("going", "l1")
    insert(db, "INSERT INTO lease_resources VALUES ('going', 'l1', 'content', ?)", DIGEST)
    insert(db, "INSERT INTO ingests(namespace, ref, backend_ref) VALUES ('going', 'r', 'b')")
    await namespaces.delete("going")
    assert await namespaces.list() == []
    assert [count(db, t) for t in ("leases", "lease_resources", "ingests")] == [0, 0, 0]


async def test_namespace_delete_refuses_rows_of_a_store_not_running(tmp_path: Path) -> None:
    """Its tables outlive a run without it: the namespace they name must stay."""
    first = Database(tmp_path / "meta.db")
    first.open()
    await NamespaceStore(first, publish).create("busy")
    first.register(PINS)
    insert(first, "INSERT INTO pins VALUES ('busy', 'a')")
    first.close()
    db = Database(tmp_path / "meta.db")
    db.open()
    try:
        namespaces = NamespaceStore(db, publish)
        with pytest.raises(FailedPrecondition) as info:
            await namespaces.delete("busy")
        assert str(info.value) == (
            "namespace 'busy' must be empty, but it still has records of stores not running: pins"
        )
        assert [ns.name for ns in await namespaces.list()] == ["busy"]
    finally:
        db.close()


class _Tagged(Schema, frozen=True):
    def holds(self, conn: sqlite3.Connection, namespace: str) -> list[str]:
        sql = "SELECT DISTINCT tag FROM tags WHERE namespace=? ORDER BY tag"
        return [f"tag {r[0]}" for r in conn.execute(sql, (namespace,))]


async def test_a_schema_may_say_what_it_holds_in_its_own_words(db: Database) -> None:
    namespaces = NamespaceStore(db, publish)
    await namespaces.create("busy")
    db.register(_Tagged("tags", ("CREATE TABLE tags (namespace TEXT, tag TEXT)",)))
    insert(db, "INSERT INTO tags VALUES ('busy', 'red'), ('busy', 'blue'), ('busy', 'red')")
    with pytest.raises(FailedPrecondition, match=r"still has: tag blue, tag red$"):
        await namespaces.delete("busy")
