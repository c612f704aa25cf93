"""One snapshotter seen through namespaces: user keys mapped to backend keys.

Records live in the metadata database (table ``snapshots``): for each
namespace, snapshotter and user key, the backend key, the parent's user name,
the kind and the labels. Backend keys are ``<namespace>/<n>/<key>`` so that
namespaces never collide in the backend.

Committed layers are shared between namespaces the way containerd shares
remotely-unpacked layers: a ``prepare`` whose labels carry
``containerd.io/snapshot.ref=<name>`` adopts a committed backend snapshot of
that name (same parent chain) from another namespace, records it in this one
and answers AlreadyExists, so the unpacker skips the layer. A backend snapshot
is removed only when no namespace record points at it.

Crash safety: backend changes come first, records after, so a crash between
the two leaves only unreferenced backend snapshots, which cleanup removes. A
commit is the exception: once the backend has renamed the active snapshot, the
active record points at nothing. The backend commit therefore carries the
record's intent in the label :data:`COMMIT_LABEL`, and :meth:`recover` (run at
start) finishes such commits from it, or drops a record whose backend snapshot
is gone for good.

Concurrency with garbage collection and cleanup: the backend is asked outside
any transaction, so a collection can delete records, and remove backend
snapshots, between a write's backend half and its record. Two rules keep the
store consistent (every record's backend snapshot and parent record exist):

* The record is written only if what the backend half relied on is still
  recorded, checked in the record's own transaction: the parent record,
  still the same layer, for a prepare or view; the active record for a
  commit. Otherwise the backend half is undone and NotFound raised, as if
  the collection had run first. (containerd gets there by holding the
  database's write transaction across the backend call; here that would
  hold every writer back for as long as a layer takes to copy.)
* A backend snapshot is *in flight* from just before the backend makes it
  until its record is written or it is undone (:meth:`in_flight`). Cleanup
  and the collector's disk phase leave in-flight snapshots alone, and look
  at the in-flight set before the records: a snapshot is then either still
  in flight or already recorded when they look, never neither.

Concurrency between writers of the same key: keys and names share one space
per namespace, and each write checks that its key is free, asks the backend,
then records. A commit cannot lose the race at the record (the backend has
already consumed the active snapshot by then), so prepare, view and commit
hold a lock per (namespace, key) across the three steps: the daemon is the
only writer of these records, so a free key stays free until recorded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import msgspec

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.core.faults import fault_point
from runtime.core.filters import adapt, parse
from runtime.core.identifiers import validate_labels, validate_namespace
from runtime.core.locks import KeyedLocks
from runtime.plugins.metadata.api import Resource
from runtime.plugins.metadata.db import Database
from runtime.plugins.metadata.leases import attach
from runtime.plugins.metadata.namespaces import ensure_namespace, now
from runtime.plugins.snapshots.api import Info, Kind, Mount, Snapshotter, Usage
from runtime.plugins.snapshots.service.events import (
    SnapshotCommit,
    SnapshotPrepare,
    SnapshotRemove,
)

__all__ = ["COMMIT_LABEL", "SNAPSHOT_REF_LABEL", "NamespacedSnapshotter"]

log = logging.getLogger("moorage.snapshots")

#: The label naming the committed snapshot a prepare is meant to become.
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
#: Backend label of a committed snapshot: the record change its commit stands for
#: (JSON: ``from`` backend key, ``namespace``, ``key``, ``name``, ``labels``, ``lease``).
COMMIT_LABEL = "containerd.io/snapshot/moorage.commit"
# Only these labels reach the backend (containerd's inherited-label rule).
_BACKEND_PREFIXES = ("containerd.io/snapshot/", SNAPSHOT_REF_LABEL)
_MAX_KEY = 4096


def _backend_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k.startswith(_BACKEND_PREFIXES)}


def _check_key(key: str, what: str = "key") -> str:
    if not key or len(key) > _MAX_KEY or "\x00" in key:
        raise InvalidArgument(f"snapshot {what} {key[:80]!r} must be 1-{_MAX_KEY} characters")
    return key


def _info(row: sqlite3.Row) -> Info:
    return Info(
        kind=Kind(row["kind"]),
        name=row["key"],
        parent=row["parent"],
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class NamespacedSnapshotter:
    """The namespaced face of one backend; every method takes the namespace first."""

    def __init__(self, name: str, backend: Snapshotter, db: Database, publish: Any) -> None:
        self.name = name
        self.backend = backend
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

    # -- creation ---------------------------------------------------------------

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
        _check_key(key)
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
                backend_key, parent_backend, _backend_labels(labels)
            )
        else:
            mounts = await self.backend.view(backend_key, parent_backend, _backend_labels(labels))
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

    async def commit(
        self,
        ns: str,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        """Commit the active ``key`` as ``name``; ``key`` is gone afterwards."""
        _check_key(name, "name")
        labels = validate_labels(labels or {})
        # Held until the record is written: the backend commit cannot be taken back.
        async with self._claim(ns, name):
            await self._commit_claimed(ns, name, key, labels, lease)
        fault_point("snapshot.commit.after-record")
        self.publish(
            ns, "/snapshot/commit", SnapshotCommit(key=key, name=name, snapshotter=self.name)
        )

    async def _commit_claimed(
        self, ns: str, name: str, key: str, labels: Mapping[str, str], lease: str | None
    ) -> None:
        """Commit in the backend, then record; the caller holds ``name``'s claim."""
        row = await self._get(ns, key)
        if row["kind"] != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {row['kind']}; only active ones commit")
        if await self.db.read(lambda c: self._row(c, ns, name)) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        if lease and await self.db.read(lambda c: c.execute(
                "SELECT 1 FROM leases WHERE namespace=? AND id=?", (ns, lease)).fetchone()) is None:
            # Refused before the backend commits: afterwards there is no going back.
            raise NotFound(f"lease {lease!r} not found")
        backend_name = self._new_backend_key(ns, name)
        intent = {"from": row["backend_key"], "namespace": ns, "key": key, "name": name,
                  "labels": labels, "lease": lease or ""}  # fmt: skip
        backend_labels = {**_backend_labels(labels), COMMIT_LABEL: json.dumps(intent)}
        self._in_flight.add(backend_name)
        try:
            await self.backend.commit(backend_name, row["backend_key"], backend_labels)
            # Crash tests: committed in the backend, still active in the records (whose
            # backend key no longer exists): recover() finishes the commit at restart.
            fault_point("snapshot.commit.after-backend")
            try:
                recorded = await self.db.write(
                    lambda conn: self._record_commit(conn, ns, key, name, backend_name,
                                                     row["backend_key"], row["parent"], labels,
                                                     lease))
            except AlreadyExists:
                # Only a writer bypassing the claim gets here. The active snapshot is
                # consumed and ``name`` is another's: drop both halves of this commit.
                await self._abandon_commit(ns, key, str(row["backend_key"]), backend_name)
                raise
            if not recorded:
                # The active record was collected (or removed) meanwhile, and perhaps its
                # parent with it: the committed layer has nothing left to stand for.
                await self.backend.remove(backend_name)
                raise NotFound(f"snapshot {key!r} was removed while it was committed")
        finally:
            self._in_flight.discard(backend_name)

    async def _abandon_commit(self, ns: str, key: str, source: str, backend_name: str) -> None:
        """Drop the active record ``key`` (still of ``source``) and the backend's ``backend_name``.

        Records first, as :meth:`remove` does: a crash in between leaves an
        unreferenced backend snapshot, which cleanup removes.
        """

        def drop(conn: sqlite3.Connection) -> None:
            active = self._row(conn, ns, key)
            if active is None or active["backend_key"] != source:
                return
            self._delete_record(conn, ns, key)

        await self.db.write(drop)
        log.warning(
            "dropped snapshot %r: committed as a name recorded meanwhile by another writer",
            key,
            extra={"namespace": ns},
        )
        with contextlib.suppress(NotFound, FailedPrecondition):
            await self.backend.remove(backend_name)

    def _delete_record(self, conn: sqlite3.Connection, ns: str, key: str) -> None:
        """Delete the record ``key`` and its lease links (inside the caller's transaction)."""
        conn.execute("DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
                     (ns, self.name, key))
        conn.execute("DELETE FROM lease_resources WHERE namespace=? AND type=? AND resource=?",
                     (ns, f"snapshots/{self.name}", key))

    def _record_commit(
        self, conn: sqlite3.Connection, ns: str, key: str, name: str, backend_name: str,
        source: str, parent: str, labels: Mapping[str, str], lease: str | None, *,
        recovering: bool = False,
    ) -> bool:
        """Replace the active record ``key`` by the committed ``name`` (one transaction).

        False, and nothing written, if ``key`` is no longer the active record of
        the backend snapshot ``source``: it was read before the backend commit,
        and a collection may have deleted it since, its parent too.
        ``recovering``: a lease gone since the crash is skipped instead of refused.
        """
        active = self._row(conn, ns, key)
        if active is None or active["backend_key"] != source:
            return False
        stamp = now()
        conn.execute(
            "DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
            (ns, self.name, key),
        )
        try:
            conn.execute(
                "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, kind,"
                " labels, created_at, updated_at) VALUES (?,?,?,?,?,'committed',?,?,?)",
                (ns, self.name, name, backend_name, parent, json.dumps(dict(labels)), stamp,
                 stamp),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"snapshot {name!r} already exists") from None
        conn.execute(
            "DELETE FROM lease_resources WHERE namespace=? AND type=? AND resource=?",
            (ns, f"snapshots/{self.name}", key),
        )
        if lease and (not recovering or conn.execute(
                "SELECT 1 FROM leases WHERE namespace=? AND id=?", (ns, lease)).fetchone()):
            attach(conn, ns, lease, Resource(type=f"snapshots/{self.name}", id=name))
        return True

    async def recover(self) -> int:
        """Settle records left pointing at backend snapshots that do not exist; return how many.

        Only a crash inside :meth:`commit` leaves such a record (the active one, after
        the backend renamed its snapshot): the commit is finished from the intent the
        committed backend snapshot carries. Any other such record is dropped, with a
        warning, so that no caller is handed a snapshot without data.
        """
        rows = await self.db.read(lambda c: c.execute(
            "SELECT * FROM snapshots WHERE snapshotter=?", (self.name,)).fetchall())
        if not rows:
            return 0
        infos = await self.backend.walk()
        present = {info.name for info in infos}
        missing = [r for r in rows if r["backend_key"] not in present]
        if not missing:
            return 0
        intents: dict[str, tuple[str, dict[str, Any]]] = {}
        for info in infos:
            with contextlib.suppress(ValueError, TypeError):
                intent = json.loads(info.labels.get(COMMIT_LABEL, ""))
                intents[str(intent["from"])] = (info.name, intent)
        for row in missing:
            ns, key = row["namespace"], row["key"]
            found = intents.get(row["backend_key"]) if row["kind"] == Kind.ACTIVE else None
            if found is not None and found[1].get("namespace") == ns and found[1].get("key") == key:
                backend_name, intent = found
                log.warning("finishing the commit of snapshot %r as %r, cut short by a crash",
                            key, intent["name"], extra={"namespace": ns})

                def finish(conn: sqlite3.Connection, r: sqlite3.Row = row,
                           b: str = backend_name, i: dict[str, Any] = intent) -> None:
                    self._record_commit(conn, r["namespace"], r["key"], str(i["name"]), b,
                                        r["backend_key"], r["parent"],
                                        dict(i.get("labels") or {}),
                                        str(i.get("lease") or "") or None, recovering=True)

                await self.db.write(finish)
                continue
            log.warning("dropping the record of snapshot %r: its backend snapshot %r is gone",
                        key, row["backend_key"], extra={"namespace": ns})

            def drop(conn: sqlite3.Connection, r: sqlite3.Row = row) -> None:
                conn.execute("DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
                             (r["namespace"], self.name, r["key"]))
                conn.execute("DELETE FROM lease_resources WHERE namespace=? AND type=? AND "
                             "resource=?", (r["namespace"], f"snapshots/{self.name}", r["key"]))

            await self.db.write(drop)
        return len(missing)

    # -- removal ----------------------------------------------------------------

    async def remove(self, ns: str, key: str) -> None:
        """Remove ``key``; FailedPrecondition while snapshots of this namespace build on it."""
        row = await self._get(ns, key)

        def delete(conn: sqlite3.Connection) -> bool:
            child = conn.execute(
                "SELECT key FROM snapshots WHERE namespace=? AND snapshotter=? AND parent=? "
                "LIMIT 1",
                (ns, self.name, key),
            ).fetchone()
            if child is not None:
                raise FailedPrecondition(
                    f"snapshot {key!r} has children (e.g. {child['key']!r}); remove them first"
                )
            self._delete_record(conn, ns, key)
            return (
                conn.execute(
                    "SELECT 1 FROM snapshots WHERE snapshotter=? AND backend_key=? LIMIT 1",
                    (self.name, row["backend_key"]),
                ).fetchone()
                is None
            )

        unreferenced = await self.db.write(delete)
        # Crash tests: the record is gone, the backend snapshot not yet.
        fault_point("snapshot.remove.after-record")
        if unreferenced:
            # Still a parent in the backend for another namespace's snapshot,
            # or already gone: cleanup settles it later.
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.backend.remove(row["backend_key"])
        self.publish(ns, "/snapshot/remove", SnapshotRemove(key=key, snapshotter=self.name))

    # -- queries ----------------------------------------------------------------

    async def stat(self, ns: str, key: str) -> Info:
        """The namespace's view of ``key``."""
        return _info(await self._get(ns, key))

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
        infos = [_info(r) for r in rows]
        return [i for i in infos if flt.match(adapt(msgspec.to_builtins(i)))]

    async def cleanup(self) -> None:
        """Remove backend snapshots no namespace refers to, leaves first, then backend cleanup.

        Prepares and commits run meanwhile, and their backend snapshots exist
        before their records. Each round therefore walks the backend first,
        then takes the in-flight keys, then reads the records: a snapshot the
        walk found is, by the time of the read, either still in flight or
        recorded, unless nothing is making it at all. Nothing can record such a
        snapshot later (adopting one needs a record of it), so it may go.
        """
        removed = True
        while removed:
            removed = False
            infos = await self.backend.walk()
            parents = {i.parent for i in infos}
            busy = set(self._in_flight)
            referenced = {
                r["backend_key"]
                for r in await self.db.read(
                    lambda c: c.execute(
                        "SELECT backend_key FROM snapshots WHERE snapshotter=?", (self.name,)
                    ).fetchall()
                )
            }
            keep = referenced | busy | parents
            for info in infos:
                if info.name not in keep:
                    try:
                        await self.backend.remove(info.name)
                        removed = True
                    except (NotFound, FailedPrecondition):
                        continue
        await self.backend.cleanup()
