"""A small, real store for garbage collection tests, built without the daemon.

:class:`World` wires a :class:`Database`, a :class:`ContentStore` with its
namespaced :class:`ContentService`, a native snapshotter with its namespaced
wrapper, the lease store and a :class:`Collector`, all under one directory.
Images and containers are written as rows, the way their stores write them
(the stores are built only to register their tables and GC sources).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime.core.events import Exchange
from runtime.plugins.containers.store import SqliteContainerStore
from runtime.plugins.content.local.service import ContentService
from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.gc.collector import Collector
from runtime.plugins.images.store import ImageStore
from runtime.plugins.metadata.db import Database
from runtime.plugins.metadata.leases import LeaseStore
from runtime.plugins.metadata.namespaces import ensure_namespace, now
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.service.namespaced import NamespacedSnapshotter
from tests.fixtures.system import require_binary


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class State:
    """Records and backend objects, as sets, for whole-store comparisons."""

    content: set[tuple[str, str]]
    snapshots: set[tuple[str, str]]
    images: set[tuple[str, str]]
    containers: set[tuple[str, str]]
    leases: set[tuple[str, str]]
    ingests: set[tuple[str, str]]
    blobs: set[str]
    backend_snapshots: set[str]
    backend_ingests: set[str]
    #: Backend keys of the snapshot records, and backend refs of the ingest records.
    recorded_backend_keys: set[str]
    recorded_backend_refs: set[str]


class World:
    """Real services over one directory; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.exchange = Exchange(buffer_size=10_000)
        self.db = Database(root / "meta.db", synchronous="NORMAL")
        self.db.open()
        self.store = ContentStore(root / "content")
        self.content = ContentService(self.store, self.db, self.publish)
        self.native = NativeSnapshotter(root / "native")
        self.snapshots = NamespacedSnapshotter("native", self.native, self.db, self.publish)
        self.leases = LeaseStore(self.db, self.publish)
        # Their rows are written directly below; the stores own (and create) the tables.
        ImageStore(self.db, self.publish)
        SqliteContainerStore(self.db, self.publish)
        self.collector = Collector(
            self.db, self.store, {"native": self.native}, {"native": self.snapshots.in_flight}
        )

    def publish(self, namespace: str, topic: str, event: msgspec.Struct) -> Any:
        return self.exchange.publish(namespace, topic, event)

    async def close(self) -> None:
        await self.native.close()
        self.db.close()

    # -- writers ---------------------------------------------------------------

    async def blob(
        self,
        ns: str,
        data: bytes,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> str:
        """Commit ``data`` in ``ns`` with ``labels``; return its digest."""
        writer = await self.content.open_writer(ns, f"ref-{digest_of(data)}", lease=lease)
        await writer.write(data)
        info = await writer.commit(labels=labels)
        return info.digest

    async def image(
        self, ns: str, name: str, target: str, labels: Mapping[str, str] | None = None
    ) -> None:
        def insert(conn: Any) -> None:
            ensure_namespace(conn, ns)
            stamp = now()
            conn.execute(
                "INSERT INTO images(namespace, name, target, labels, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?)",
                (
                    ns,
                    name,
                    json.dumps(
                        {
                            "mediaType": "application/vnd.oci.image.index.v1+json",
                            "digest": target,
                            "size": 10,
                        }
                    ),
                    json.dumps(dict(labels or {})),
                    stamp,
                    stamp,
                ),
            )

        await self.db.write(insert)

    async def container(
        self,
        ns: str,
        id: str,
        *,
        snapshot_key: str = "",
        image: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        record = {
            "id": id,
            "image": image,
            "snapshotter": "native" if snapshot_key else "",
            "snapshot_key": snapshot_key,
            "labels": dict(labels or {}),
        }

        def insert(conn: Any) -> None:
            ensure_namespace(conn, ns)
            stamp = now()
            conn.execute(
                "INSERT INTO containers(namespace, id, record, created_at, updated_at)"
                " VALUES (?,?,?,?,?)",
                (ns, id, json.dumps(record), stamp, stamp),
            )

        await self.db.write(insert)

    async def ingest_row(
        self,
        ns: str,
        ref: str,
        *,
        expected: str = "",
        expires_at: str = "",
        backend_ref: str | None = None,
    ) -> None:
        """An ingest record whose backend ingest does not exist (unless ``backend_ref`` is)."""

        def insert(conn: Any) -> None:
            ensure_namespace(conn, ns)
            conn.execute(
                "INSERT INTO ingests(namespace, ref, backend_ref, expected, expires_at)"
                " VALUES (?,?,?,?,?)",
                (ns, ref, backend_ref or f"gone/{ns}/{ref}", expected, expires_at),
            )

        await self.db.write(insert)

    async def live_ingest(
        self, ns: str, ref: str, data: bytes = b"partial", expected: str = ""
    ) -> None:
        """An upload in progress: record and backend ingest, writer closed.

        ``expected`` is set on the record only: the backend refuses to start an
        upload of a blob it has, but a record may name one committed since.
        """
        writer = await self.content.open_writer(ns, ref)
        await writer.write(data)
        await writer.close()
        if expected:

            def update(conn: Any) -> None:
                conn.execute(
                    "UPDATE ingests SET expected=? WHERE namespace=? AND ref=?", (expected, ns, ref)
                )

            await self.db.write(update)

    async def orphan_ingest(self, backend_ref: str, data: bytes = b"orphan") -> None:
        """A backend ingest no record knows (a crash between the two halves of an open)."""
        writer = await self.store.open_writer(backend_ref)
        await writer.write(data)
        await writer.close()

    # -- readers ---------------------------------------------------------------

    async def state(self) -> State:
        def read(conn: Any) -> dict[str, Any]:
            def pairs(sql: str) -> set[tuple[str, str]]:
                return {(r[0], r[1]) for r in conn.execute(sql)}

            return {
                "content": pairs("SELECT namespace, digest FROM content"),
                "snapshots": pairs("SELECT namespace, key FROM snapshots"),
                "images": pairs("SELECT namespace, name FROM images"),
                "containers": pairs("SELECT namespace, id FROM containers"),
                "leases": pairs("SELECT namespace, id FROM leases"),
                "ingests": pairs("SELECT namespace, ref FROM ingests"),
                "recorded_backend_keys": {
                    r[0] for r in conn.execute("SELECT backend_key FROM snapshots")
                },
                "recorded_backend_refs": {
                    r[0] for r in conn.execute("SELECT backend_ref FROM ingests")
                },
            }

        rows = await self.db.read(read)
        return State(
            **rows,
            blobs={b.digest for b in await self.store.walk()},
            backend_snapshots={i.name for i in await self.native.walk()},
            backend_ingests={s.ref for s in await self.store.list_statuses()},
        )


@pytest.fixture
def make_world() -> Callable[[Path], AbstractAsyncContextManager[World]]:
    """``async with make_world(dir) as world``: a World, closed afterwards."""
    require_binary("cp")

    @asynccontextmanager
    async def factory(root: Path) -> AsyncIterator[World]:
        world = World(root)
        try:
            yield world
        finally:
            await world.close()

    return factory
