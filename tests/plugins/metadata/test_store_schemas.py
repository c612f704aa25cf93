"""The metadata database's migrations: each store creates and migrates its own tables.

``VERSION_1`` is the schema as one list of migrations created it before the
tables were split among their stores (``runtime/plugins/metadata/db.py``,
``MIGRATIONS[0]``, verbatim): files made by that code must open unchanged.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from runtime.core.errors import MoorageError
from runtime.plugins.containers.store import SqliteContainerStore
from runtime.plugins.content.local.service import ContentService
from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.images.store import ImageStore
from runtime.plugins.metadata.api import Schema
from runtime.plugins.metadata.db import SCHEMA_VERSION, Database
from runtime.plugins.metadata.leases import LeaseStore
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.service.namespaced import NamespacedSnapshotter

VERSION_1 = """
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
    """
STAMP = "2024-01-01T00:00:00+00:00"
DIGEST = "sha256:" + "0" * 64


def publish(namespace: str, topic: str, event: object) -> None:
    pass


def tables(path: Path) -> dict[str, str]:
    """Every table and index of the file, with the SQL that created it."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return {name: sql for name, sql in rows}


def owners(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT owner, version FROM schema_owners").fetchall())


def make_version_1(path: Path) -> None:
    """A file as the daemon before the split left it: version 1, a few records."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    for statement in VERSION_1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO namespaces VALUES ('default', '{}', ?, ?)", (STAMP, STAMP))
    conn.execute("INSERT INTO content VALUES ('default', ?, 3, '{}', ?, ?)", (DIGEST, STAMP, STAMP))
    target = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": DIGEST, "size": 3}
    conn.execute(
        "INSERT INTO images VALUES ('default', 'img', ?, '{}', ?, ?)",
        (json.dumps(target), STAMP, STAMP),
    )
    conn.execute("INSERT INTO leases VALUES ('default', 'l1', '{}', ?)", (STAMP,))
    conn.execute("INSERT INTO lease_resources VALUES ('default', 'l1', 'content', ?)", (DIGEST,))
    conn.execute("COMMIT")
    conn.close()


def start_every_store(db: Database, root: Path) -> tuple[ImageStore, ContentService, LeaseStore]:
    """What the daemon's plugins do at start: each store registers its tables."""
    images = ImageStore(db, publish)
    SqliteContainerStore(db, publish)
    content = ContentService(ContentStore(root / "content"), db, publish)
    NamespacedSnapshotter("native", NativeSnapshotter(root / "native"), db, publish)
    return images, content, LeaseStore(db, publish)


def test_store_tables_are_created_by_their_owner(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.open()
    try:
        # The database's own: the namespaces and leases every store writes to.
        assert {"namespaces", "leases", "lease_resources"} <= set(tables(db.path))
        assert "images" not in tables(db.path)
        ImageStore(db, publish)
        assert "images" in tables(db.path)
        assert "containers" not in tables(db.path)
        assert owners(db.path) == {"namespaces": 1, "leases": 1, "images": 1}
        assert [s.name for s in db.sources] == ["leases", "images"]
    finally:
        db.close()


async def test_database_from_previous_schema_opens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    make_version_1(path)
    before = tables(path)
    db = Database(path)
    db.open()
    try:
        images, content, leases = start_every_store(db, tmp_path)
        # Every table as it was, same definition; only the owners' versions were added.
        after = tables(path)
        assert {n: after[n] for n in before} == before
        assert set(after) - set(before) == {"schema_owners"}
        assert owners(path) == dict.fromkeys(
            ("namespaces", "content", "images", "containers", "snapshots", "leases"), 1
        )
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # And the records read back through their stores.
        assert [i.name for i in await images.list("default")] == ["img"]
        assert [c.digest for c in await content.list("default")] == [DIGEST]
        assert [r.id for r in await leases.resources("default", "l1")] == [DIGEST]
    finally:
        db.close()


def test_a_store_migrates_only_its_own_new_steps(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.open()
    db.register(Schema("pins", ("CREATE TABLE pins (namespace TEXT, key TEXT)",)))
    db.close()
    db = Database(tmp_path / "meta.db")
    db.open()
    try:
        # Version 1 is not run again (it would fail: the table exists); version 2 is.
        db.register(
            Schema(
                "pins",
                (
                    "CREATE TABLE pins (namespace TEXT, key TEXT)",
                    "ALTER TABLE pins ADD COLUMN note TEXT NOT NULL DEFAULT ''",
                ),
            )
        )
        assert owners(db.path)["pins"] == 2
        assert "note" in tables(db.path)["pins"]
    finally:
        db.close()


def test_tables_newer_than_the_store_are_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.open()
    try:
        db.write_sync(lambda c: c.execute("INSERT INTO schema_owners VALUES ('images', 7)"))
        with pytest.raises(MoorageError, match="refusing to downgrade"):
            ImageStore(db, publish)
    finally:
        db.close()


def test_a_file_newer_than_the_daemon_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(MoorageError, match="refusing to downgrade"):
        Database(path).open()


def test_two_schemas_for_one_owner_are_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.open()
    try:
        db.register(Schema("pins", ("CREATE TABLE pins (key TEXT)",)))
        db.register(Schema("pins", ("CREATE TABLE pins (key TEXT)",)))  # the same: fine
        with pytest.raises(MoorageError, match="two schemas"):
            db.register(Schema("pins", ("CREATE TABLE other (key TEXT)",)))
    finally:
        db.close()
