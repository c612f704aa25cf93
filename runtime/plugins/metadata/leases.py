"""Leases: named holds on content, ingests, images and snapshots, with optional expiry."""

from __future__ import annotations

import base64
import builtins
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from runtime.core.errors import AlreadyExists, NotFound
from runtime.core.filters import adapt, parse
from runtime.core.identifiers import validate_identifier, validate_labels, validate_namespace
from runtime.plugins.metadata.api import (
    EXPIRE_LABEL,
    Lease,
    LeaseCreate,
    LeaseDelete,
    Publish,
    Resource,
    attach,
    ensure_namespace,
    lease_expired,
    now,
)
from runtime.plugins.metadata.db import Database

__all__ = ["LeaseStore", "attach", "detach", "generate_lease_id", "lease_expired"]


def generate_lease_id() -> str:
    """``<nanoseconds>-<random>``, like containerd's helper: sortable and unique."""
    rand = base64.urlsafe_b64encode(os.urandom(6)).decode().rstrip("=").replace("-", "x")
    return f"{time.time_ns()}-{rand.replace('_', 'y')}"


def detach(conn: sqlite3.Connection, namespace: str, lease: str, resource: Resource) -> None:
    """Remove ``resource`` from ``lease`` inside the caller's transaction."""
    conn.execute(
        "DELETE FROM lease_resources WHERE namespace=? AND lease=? AND type=? AND resource=?",
        (namespace, lease, resource.type, resource.id),
    )


def _row(row: sqlite3.Row) -> Lease:
    return Lease(
        id=row["id"],
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
    )


class LeaseStore:
    """Create, list and delete leases and manage their resources, per namespace."""

    def __init__(self, db: Database, publish: Publish) -> None:
        self.db = db
        self.publish = publish

    async def create(
        self,
        namespace: str,
        lease_id: str = "",
        labels: Mapping[str, str] | None = None,
        expire: timedelta | None = None,
    ) -> Lease:
        """Create a lease (id generated when empty); ``expire`` sets the gc.expire label."""
        validate_namespace(namespace)
        lease_id = validate_identifier(lease_id or generate_lease_id(), "lease id")
        labels = dict(validate_labels(labels or {}))
        if expire is not None:
            labels[EXPIRE_LABEL] = (datetime.now(UTC) + expire).isoformat().replace("+00:00", "Z")

        def insert(conn: sqlite3.Connection) -> None:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    "INSERT INTO leases(namespace, id, labels, created_at) VALUES (?,?,?,?)",
                    (namespace, lease_id, json.dumps(labels), now()),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"lease {lease_id!r} already exists") from None

        await self.db.write(insert)
        self.publish(namespace, "/leases/create", LeaseCreate(id=lease_id, labels=labels))
        return await self.get(namespace, lease_id)

    async def get(self, namespace: str, lease_id: str) -> Lease:
        """One lease, or NotFound."""
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM leases WHERE namespace=? AND id=?", (namespace, lease_id)
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"lease {lease_id!r} not found")
        return _row(row)

    async def list(self, namespace: str, filters: list[str] | None = None) -> list[Lease]:
        """Leases of the namespace matching any filter (fields ``id``, ``labels.<k>``)."""
        flt = parse(filters or [])
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM leases WHERE namespace=? ORDER BY id", (namespace,)
            ).fetchall()
        )
        leases = [_row(r) for r in rows]
        return [
            lease for lease in leases if flt.match(adapt({"id": lease.id, "labels": lease.labels}))
        ]

    async def delete(self, namespace: str, lease_id: str) -> None:
        """Delete a lease; what it held becomes collectable unless referenced elsewhere."""

        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM leases WHERE namespace=? AND id=?", (namespace, lease_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"lease {lease_id!r} not found")
            conn.execute(
                "DELETE FROM lease_resources WHERE namespace=? AND lease=?", (namespace, lease_id)
            )

        await self.db.write(delete)
        self.publish(namespace, "/leases/delete", LeaseDelete(id=lease_id))

    async def add_resource(self, namespace: str, lease_id: str, resource: Resource) -> None:
        """Hold ``resource`` under the lease."""
        await self.db.write(lambda c: attach(c, namespace, lease_id, resource))

    async def delete_resource(self, namespace: str, lease_id: str, resource: Resource) -> None:
        """Release ``resource`` from the lease."""
        await self.get(namespace, lease_id)
        await self.db.write(lambda c: detach(c, namespace, lease_id, resource))

    async def resources(self, namespace: str, lease_id: str) -> builtins.list[Resource]:
        """What the lease holds."""
        await self.get(namespace, lease_id)
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT type, resource FROM lease_resources WHERE namespace=? AND lease=? "
                "ORDER BY type, resource",
                (namespace, lease_id),
            ).fetchall()
        )
        return [Resource(type=r["type"], id=r["resource"]) for r in rows]
