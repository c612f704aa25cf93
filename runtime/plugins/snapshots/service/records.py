"""The snapshot records of one backend by namespace: lookups, claims, labels and queries.

Records live in the metadata database (table ``snapshots``): for each namespace,
snapshotter and user key, the backend key, the parent's user name, the kind and
the labels.
"""


from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping
from datetime import datetime

import msgspec

from runtime.core.errors import InvalidArgument, NotFound
from runtime.core.filters import adapt, parse
from runtime.core.identifiers import validate_labels, validate_namespace
from runtime.core.locks import KeyedLocks
from runtime.plugins.metadata.api import Database, Publish, detach_everywhere, now
from runtime.plugins.snapshots.api import (
    Info,
    Kind,
    LocalSnapshotter,
    Mount,
    Snapshotter,
    Usage,
)
from runtime.plugins.snapshots.service.tables import SNAPSHOTS, SnapshotSource

__all__ = ["COMMIT_LABEL", "SNAPSHOT_REF_LABEL", "SnapshotRecords"]


#: The label naming the committed snapshot a prepare is meant to become.
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
#: Backend label of a committed snapshot: the record change its commit stands for
#: (JSON: ``from`` backend key, ``namespace``, ``key``, ``name``, ``labels``, ``lease``).
COMMIT_LABEL = "containerd.io/snapshot/moorage.commit"
# Only these labels reach the backend (containerd's inherited-label rule).
_BACKEND_PREFIXES = ("containerd.io/snapshot/", SNAPSHOT_REF_LABEL)
_MAX_KEY = 4096


def labels_for_backend(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k.startswith(_BACKEND_PREFIXES)}


def check_key(key: str, what: str = "key") -> str:
    if not key or len(key) > _MAX_KEY or "\x00" in key:
        raise InvalidArgument(f"snapshot {what} {key[:80]!r} must be 1-{_MAX_KEY} characters")
    return key


def info_of(row: sqlite3.Row) -> Info:
    return Info(
        kind=Kind(row["kind"]),
        name=row["key"],
        parent=row["parent"],
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class SnapshotRecords:
    """The records of one backend's snapshots by namespace: lookups, claims and queries.

    :class:`~.namespaced.NamespacedSnapshotter` builds on it; see its module for the
    rules that keep records and backend consistent.
    """

    def __init__(self, name: str, backend: Snapshotter, db: Database, publish: Publish) -> None:
        # One table for every snapshotter: the first to start registers it.
        db.register(SNAPSHOTS, SnapshotSource())
        self.name = name
        self.backend = backend
        # Asked once: only a backend on local disk has a directory to name.
        self.root = str(backend.root) if isinstance(backend, LocalSnapshotter) else ""
        self.db = db
        self.publish = publish
        # Backend keys made but not yet recorded (or undone); see the module docstring.
        self._in_flight: set[str] = set()
        # Held from a key's is-it-free check to its record; see the module docstring.
        self._keys = KeyedLocks()

    def in_flight(self, backend_key: str) -> bool:
        """Whether ``backend_key`` is being made by a prepare, view or commit, not yet recorded.

        Anything that removes backend snapshots no record names must skip
        these, and must ask before it reads the records: an operation leaves
        this set only once its record is committed (or its backend half undone).
        """
        return backend_key in self._in_flight

    @contextlib.asynccontextmanager
    async def _claim(self, ns: str, *keys: str) -> AsyncIterator[None]:
        """Hold the locks of ``keys`` in ``ns``, taken in sorted order so claims never deadlock."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                # NUL is refused in keys (and namespaces), so the pair is unambiguous.
                await stack.enter_async_context(self._keys.hold(f"{ns}\x00{key}"))
            yield

    # -- lookups ----------------------------------------------------------------

    def _row(self, conn: sqlite3.Connection, ns: str, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
            (ns, self.name, key),
        ).fetchone()
        return row

    async def _get(self, ns: str, key: str) -> sqlite3.Row:
        validate_namespace(ns)
        row = await self.db.read(lambda c: self._row(c, ns, key))
        if row is None:
            raise NotFound(f"snapshot {key!r} not found in snapshotter {self.name!r}")
        return row

    def _new_backend_key(self, ns: str, key: str) -> str:
        return f"{ns}/{os.urandom(6).hex()}/{key}"

    def _parent_unchanged(
        self, conn: sqlite3.Connection, ns: str, parent: str, parent_backend: str
    ) -> bool:
        """Whether ``parent`` is still recorded in ``ns`` as the layer ``parent_backend``.

        Call in the transaction that writes a record naming ``parent``: it was
        read in an earlier one, and a collection (or a remove and a new
        prepare of the same key) may have run since.
        """
        if not parent:
            return True
        row = self._row(conn, ns, parent)
        return row is not None and row["backend_key"] == parent_backend


    def _delete_record(self, conn: sqlite3.Connection, ns: str, key: str) -> None:
        """Delete the record ``key`` and its lease links (inside the caller's transaction)."""
        conn.execute("DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
                     (ns, self.name, key))
        detach_everywhere(conn, ns, f"snapshots/{self.name}", key)


    # -- queries ----------------------------------------------------------------

    async def stat(self, ns: str, key: str) -> Info:
        """The namespace's view of ``key``."""
        return info_of(await self._get(ns, key))

    async def update(self, ns: str, key: str, labels: Mapping[str, str]) -> Info:
        """Set labels (an empty value removes one)."""
        validate_labels(labels)
        await self._get(ns, key)

        def update(conn: sqlite3.Connection) -> None:
            row = self._row(conn, ns, key)
            if row is None:
                raise NotFound(f"snapshot {key!r} not found")
            merged = {k: v for k, v in {**json.loads(row["labels"]), **labels}.items() if v}
            conn.execute(
                "UPDATE snapshots SET labels=?, updated_at=? WHERE namespace=? AND "
                "snapshotter=? AND key=?",
                (json.dumps(merged), now(), ns, self.name, key),
            )

        await self.db.write(update)
        return await self.stat(ns, key)

    async def usage(self, ns: str, key: str) -> Usage:
        """Bytes and inodes of ``key`` itself."""
        return await self.backend.usage((await self._get(ns, key))["backend_key"])

    async def mounts(self, ns: str, key: str) -> list[Mount]:
        """Mounts of an active snapshot or view."""
        return await self.backend.mounts((await self._get(ns, key))["backend_key"])

    async def walk(self, ns: str, *filters: str) -> list[Info]:
        """Snapshots of the namespace matching any filter."""
        validate_namespace(ns)
        flt = parse(filters)
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM snapshots WHERE namespace=? AND snapshotter=? ORDER BY key",
                (ns, self.name),
            ).fetchall()
        )
        infos = [info_of(r) for r in rows]
        return [i for i in infos if flt.match(adapt(msgspec.to_builtins(i)))]
