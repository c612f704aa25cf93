"""What the stores report for the metrics plugin: each counts its own tables.

``content.local`` answers :meth:`NamespacedContent.usage` and ``service.snapshots``
answers :meth:`SnapshotCounts.counts`; the metrics plugin reads no table itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.plugins.content.api import ContentUsage
from runtime.plugins.content.local.service import ContentService
from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.metadata.db import Database
from runtime.plugins.snapshots.api import Kind, SnapshotCount
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.service.namespaced import NamespacedSnapshotter
from runtime.plugins.snapshots.service.plugin import SnapshotService

STAMP = "2024-01-01T00:00:00+00:00"


def publish(namespace: str, topic: str, event: object) -> None:
    pass


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "meta.db")
    database.open()
    yield database
    database.close()


async def commit(content: ContentService, namespace: str, data: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    writer = await content.open_writer(namespace, f"up-{digest}", total=len(data))
    await writer.write(data)
    await writer.commit(len(data), digest)


async def test_content_usage_counts_records_per_namespace_and_blobs_on_disk_once(
    db: Database, tmp_path: Path
) -> None:
    content = ContentService(ContentStore(tmp_path / "content"), db, publish)
    assert await content.usage() == ContentUsage()
    await commit(content, "a", b"shared")
    await commit(content, "b", b"shared")
    await commit(content, "b", b"only in b")
    pending = await content.open_writer("a", "half", total=10)
    await pending.write(b"half")
    await pending.close()
    assert await content.usage() == ContentUsage(
        blobs={"a": 1, "b": 2},
        bytes={"a": 6, "b": 6 + 9},
        ingests={"a": 1},
        stored_blobs=2,
        stored_bytes=6 + 9,
    )


async def test_snapshot_counts_cover_every_snapshotter_namespace_and_kind(
    db: Database, tmp_path: Path
) -> None:
    native = NamespacedSnapshotter("native", NativeSnapshotter(tmp_path / "native"), db, publish)
    service = SnapshotService({"native": native}, "native", db)
    await native.prepare("a", "work")
    await native.commit("a", "layer", "work")
    await native.view("a", "look", "layer")
    await native.prepare("b", "one")
    await native.prepare("b", "two")
    # A record of a snapshotter not running now: still a record, still counted.
    db.write_sync(lambda c: c.execute(
        "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, kind, created_at, "
        "updated_at) VALUES ('a', 'gone', 'k', 'k', 'committed', ?, ?)", (STAMP, STAMP)))
    assert await service.counts() == [
        SnapshotCount(snapshotter="gone", namespace="a", kind=Kind.COMMITTED, count=1),
        SnapshotCount(snapshotter="native", namespace="a", kind=Kind.COMMITTED, count=1),
        SnapshotCount(snapshotter="native", namespace="a", kind=Kind.VIEW, count=1),
        SnapshotCount(snapshotter="native", namespace="b", kind=Kind.ACTIVE, count=2),
    ]
