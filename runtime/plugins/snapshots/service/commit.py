"""Committing snapshots, and recovering the commits a crash interrupted.

Once the backend has renamed the active snapshot, the active record points at
nothing; the backend commit therefore carries the record's intent in the label
:data:`~.records.COMMIT_LABEL`, and :meth:`SnapshotCommits.recover` (run at
start) finishes such commits from it, or drops a record whose backend snapshot
is gone for good.
"""


from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from runtime.core.errors import AlreadyExists, FailedPrecondition, NotFound
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_labels
from runtime.plugins.metadata.api import Resource, attach, detach_everywhere, lease_exists, now
from runtime.plugins.snapshots.api import Kind
from runtime.plugins.snapshots.service.events import (
    SnapshotCommit,
)
from runtime.plugins.snapshots.service.records import (
    COMMIT_LABEL,
    SnapshotRecords,
    check_key,
    labels_for_backend,
)

__all__ = ["SnapshotCommits"]

log = logging.getLogger("moorage.snapshots")


class SnapshotCommits(SnapshotRecords):
    """Commit an active snapshot, undo an abandoned one, and finish interrupted commits."""

    async def commit(
        self,
        ns: str,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        """Commit the active ``key`` as ``name``; ``key`` is gone afterwards."""
        check_key(name, "name")
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
        if lease and not await self.db.read(lambda c: lease_exists(c, ns, lease)):
            # Refused before the backend commits: afterwards there is no going back.
            raise NotFound(f"lease {lease!r} not found")
        backend_name = self._new_backend_key(ns, name)
        intent = {"from": row["backend_key"], "namespace": ns, "key": key, "name": name,
                  "labels": labels, "lease": lease or ""}  # fmt: skip
        backend_labels = {**labels_for_backend(labels), COMMIT_LABEL: json.dumps(intent)}
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
        detach_everywhere(conn, ns, f"snapshots/{self.name}", key)
        if lease and (not recovering or lease_exists(conn, ns, lease)):
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
                detach_everywhere(conn, r["namespace"], f"snapshots/{self.name}", r["key"])

            await self.db.write(drop)
        return len(missing)
