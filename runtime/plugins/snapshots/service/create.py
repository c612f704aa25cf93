"""Creating snapshots: prepare and view, and adopting a committed layer another namespace made.

A ``prepare`` whose labels carry ``containerd.io/snapshot.ref=<name>`` adopts a
committed backend snapshot of that name (same parent chain) from another
namespace, records it in this one and answers AlreadyExists, so the unpacker
skips the layer.
"""


from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Mapping

from runtime.core.errors import AlreadyExists, InvalidArgument, NotFound
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_labels, validate_namespace
from runtime.plugins.metadata.api import Resource, attach, ensure_namespace, now
from runtime.plugins.snapshots.api import Kind, Mount
from runtime.plugins.snapshots.service.events import (
    SnapshotPrepare,
)
from runtime.plugins.snapshots.service.records import (
    SNAPSHOT_REF_LABEL,
    SnapshotRecords,
    check_key,
    labels_for_backend,
)

__all__ = ["SnapshotCreation"]



class SnapshotCreation(SnapshotRecords):
    """Prepare and view: a backend snapshot, then its record; adoption of shared layers."""

    async def prepare(
        self,
        ns: str,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """Create an active snapshot ``key`` on ``parent`` and return its mounts."""
        return await self._create(Kind.ACTIVE, ns, key, parent, labels, lease)

    async def view(
        self,
        ns: str,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """Create a read-only view ``key`` of ``parent`` and return its mounts."""
        return await self._create(Kind.VIEW, ns, key, parent, labels, lease)

    async def _parent_backend(self, ns: str, parent: str) -> str:
        if not parent:
            return ""
        row = await self._get(ns, parent)
        if row["kind"] != Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is {row['kind']}, not committed")
        return str(row["backend_key"])

    async def _create(
        self,
        kind: Kind,
        ns: str,
        key: str,
        parent: str,
        labels: Mapping[str, str] | None,
        lease: str | None,
    ) -> list[Mount]:
        validate_namespace(ns)
        check_key(key)
        labels = validate_labels(labels or {})
        target = labels.get(SNAPSHOT_REF_LABEL) if kind == Kind.ACTIVE else None
        # An adoption records ``target``: a commit to that name must not slip in either.
        async with self._claim(ns, key, *([target] if target else [])):
            if await self.db.read(lambda c: self._row(c, ns, key)) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            parent_backend = await self._parent_backend(ns, parent)
            if target:
                await self._adopt(ns, target, parent, parent_backend, lease)
            backend_key = self._new_backend_key(ns, key)
            self._in_flight.add(backend_key)
            try:
                mounts = await self._create_recorded(
                    kind, ns, key, parent, parent_backend, backend_key, labels, lease
                )
            finally:
                self._in_flight.discard(backend_key)
        fault_point("snapshot.prepare.after-record")
        self.publish(
            ns, "/snapshot/prepare", SnapshotPrepare(key=key, parent=parent, snapshotter=self.name)
        )
        return mounts

    async def _create_recorded(
        self,
        kind: Kind,
        ns: str,
        key: str,
        parent: str,
        parent_backend: str,
        backend_key: str,
        labels: Mapping[str, str],
        lease: str | None,
    ) -> list[Mount]:
        """Make the backend snapshot ``backend_key``, then its record; undo the first if need be."""
        if kind == Kind.ACTIVE:
            mounts = await self.backend.prepare(
                backend_key, parent_backend, labels_for_backend(labels)
            )
        else:
            mounts = await self.backend.view(
                backend_key, parent_backend, labels_for_backend(labels)
            )
        # Crash tests: a backend snapshot no record refers to (cleanup's to remove).
        fault_point("snapshot.prepare.after-backend")

        def record(conn: sqlite3.Connection) -> None:
            if not self._parent_unchanged(conn, ns, parent, parent_backend):
                # Collected (or removed) since it was read: recording the child would
                # name a parent that is gone, whose backend snapshot goes next.
                raise NotFound(
                    f"parent snapshot {parent!r} was removed while {key!r} was created on it"
                )
            ensure_namespace(conn, ns)
            stamp = now()
            try:
                conn.execute(
                    "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, kind,"
                    " labels, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        ns,
                        self.name,
                        key,
                        backend_key,
                        parent,
                        kind.value,
                        json.dumps(labels),
                        stamp,
                        stamp,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"snapshot {key!r} already exists") from None
            if lease:
                attach(conn, ns, lease, Resource(type=f"snapshots/{self.name}", id=key))

        try:
            await self.db.write(record)
        except BaseException:
            # Lost a race for the same key, or the parent is gone: undo the backend half.
            await self.backend.remove(backend_key)
            raise
        return mounts

    async def _adopt(
        self, ns: str, target: str, parent: str, parent_backend: str, lease: str | None
    ) -> None:
        """Raise AlreadyExists if ``target`` exists here or can be shared from elsewhere."""
        if await self.db.read(lambda c: self._row(c, ns, target)) is not None:
            raise AlreadyExists(f"snapshot {target!r} already exists")
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT backend_key FROM snapshots WHERE snapshotter=? AND key=?"
                " AND kind='committed'",
                (self.name, target),
            ).fetchall()
        )
        for row in rows:
            backend_key = str(row["backend_key"])
            try:
                info = await self.backend.stat(backend_key)
            except NotFound:
                continue
            if info.parent != parent_backend:
                continue
            adopted = await self.db.write(
                functools.partial(
                    self._record_adoption,
                    ns=ns,
                    target=target,
                    parent=parent,
                    parent_backend=parent_backend,
                    backend_key=backend_key,
                    lease=lease,
                )
            )
            if adopted:
                raise AlreadyExists(f"snapshot {target!r} already exists (shared)")

    def _record_adoption(
        self,
        conn: sqlite3.Connection,
        *,
        ns: str,
        target: str,
        parent: str,
        parent_backend: str,
        backend_key: str,
        lease: str | None,
    ) -> bool:
        """Record ``backend_key`` as ``target`` in ``ns`` if it is still shared; False if not.

        The stat that found the backend snapshot ran outside any transaction, so
        a collection (or a remove) may have dropped the last record naming it
        since, and then its backend snapshot. Both delete the records first and
        remove a backend snapshot only once no record names it, so a record
        still naming ``backend_key`` here, in the writer's transaction, means
        the backend snapshot is still there, and the record written beside it
        keeps it from now on. Without one, adopting would record a layer that
        is gone (or about to be): the caller unpacks it afresh instead.
        """
        source = conn.execute(
            "SELECT labels FROM snapshots WHERE snapshotter=? AND backend_key=? "
            "AND kind='committed' LIMIT 1",
            (self.name, backend_key),
        ).fetchone()
        if source is None:
            return False
        # The new record names its parent by this namespace's key: that record
        # too must still exist (and be the same layer) when this one is written.
        if not self._parent_unchanged(conn, ns, parent, parent_backend):
            return False
        ensure_namespace(conn, ns)
        stamp = now()
        conn.execute(
            "INSERT OR IGNORE INTO snapshots(namespace, snapshotter, key, backend_key,"
            " parent, kind, labels, created_at, updated_at)"
            " VALUES (?,?,?,?,?,'committed',?,?,?)",
            (ns, self.name, target, backend_key, parent, source["labels"], stamp, stamp),
        )
        if lease:
            attach(conn, ns, lease, Resource(type=f"snapshots/{self.name}", id=target))
        return True
