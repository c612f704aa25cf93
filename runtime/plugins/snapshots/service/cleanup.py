"""Removing snapshots: one by key, and the backend snapshots no record refers to."""


from __future__ import annotations

import contextlib
import sqlite3

from runtime.core.errors import FailedPrecondition, NotFound
from runtime.core.faults import fault_point
from runtime.plugins.snapshots.service.events import (
    SnapshotRemove,
)
from runtime.plugins.snapshots.service.records import SnapshotRecords

__all__ = ["SnapshotCleanup"]



class SnapshotCleanup(SnapshotRecords):
    """Remove a snapshot by key, and backend snapshots no namespace refers to."""

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
