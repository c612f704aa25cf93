"""The metadata plugin's contract: records, events, and what stores sharing its database use.

Stores of other plugins (content, images, containers, snapshots) keep their
records in the one SQLite database ``metadata.sqlite`` opens: they are handed its
:class:`Database`, register their tables there as a :class:`Schema` (with the
garbage collector's ``Source`` over them), create a record's namespace with
:func:`ensure_namespace` and add it to a lease with :func:`attach`, inside
their own transaction.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol

import msgspec

from runtime.core.errors import InvalidArgument, NotFound
from runtime.core.identifiers import validate_namespace
from runtime.plugins.metadata.db import Database, sqlite_errors
from runtime.plugins.metadata.schema import Schema

__all__ = [
    "RESOURCE_TYPES",
    "Database",
    "Lease",
    "Leases",
    "Metadata",
    "Namespace",
    "NamespaceCreate",
    "NamespaceDelete",
    "NamespaceUpdate",
    "Namespaces",
    "Publish",
    "Resource",
    "Schema",
    "attach",
    "detach_everywhere",
    "ensure_namespace",
    "lease_exists",
    "lease_expired",
    "now",
    "sqlite_errors",
]


class Namespace(msgspec.Struct, kw_only=True):
    """A namespace: an administrative partition of images, containers, content, leases."""

    name: str
    labels: dict[str, str] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None


class NamespaceCreate(msgspec.Struct, kw_only=True):
    """Event ``/namespaces/create``."""

    name: str
    labels: dict[str, str] = {}


class NamespaceUpdate(msgspec.Struct, kw_only=True):
    """Event ``/namespaces/update``."""

    name: str
    labels: dict[str, str] = {}


class NamespaceDelete(msgspec.Struct, kw_only=True):
    """Event ``/namespaces/delete``."""

    name: str


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    """A leased object: ``type`` is ``content``, ``ingests``, ``images`` or ``snapshots/<sn>``."""

    type: str
    id: str


class Lease(msgspec.Struct, kw_only=True):
    """A lease: it protects what it holds from garbage collection.

    The protection ends when the lease is deleted or its ``containerd.io/gc.expire``
    time passes.
    """

    id: str
    labels: dict[str, str] = {}
    created_at: datetime | None = None


class LeaseCreate(msgspec.Struct, kw_only=True):
    """Event ``/leases/create``."""

    id: str
    labels: dict[str, str] = {}


class LeaseDelete(msgspec.Struct, kw_only=True):
    """Event ``/leases/delete``."""

    id: str


#: The label holding a lease's expiry time (RFC 3339), as containerd spells it.
EXPIRE_LABEL = "containerd.io/gc.expire"
#: Resource types a lease may hold (``snapshots/<snapshotter>`` too).
RESOURCE_TYPES = ("content", "ingests", "images")


#: How a store publishes an event: ``publish(namespace, topic, event)``.
Publish = Callable[[str, str, msgspec.Struct], object]


def now() -> str:
    """The current UTC time as stored in the database (ISO 8601)."""
    return datetime.now(UTC).isoformat()


def ensure_namespace(conn: sqlite3.Connection, name: str) -> bool:
    """Create ``name`` inside the caller's transaction if missing; True if created."""
    validate_namespace(name)
    stamp = now()
    cur = conn.execute(
        "INSERT OR IGNORE INTO namespaces(name, labels, created_at, updated_at) "
        "VALUES (?, '{}', ?, ?)",
        (name, stamp, stamp),
    )
    return cur.rowcount > 0


def check_resource(resource: Resource) -> None:
    if resource.type not in RESOURCE_TYPES and not (
        resource.type.startswith("snapshots/") and len(resource.type) > len("snapshots/")
    ):
        raise InvalidArgument(
            f"resource type {resource.type!r}: use content, ingests, images or snapshots/<name>"
        )
    if not resource.id:
        raise InvalidArgument("resource id must not be empty")


def lease_expired(labels: Mapping[str, str], at: datetime | None = None) -> bool:
    """True if the lease's ``containerd.io/gc.expire`` label lies in the past."""
    raw = labels.get(EXPIRE_LABEL)
    if not raw:
        return False
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when <= (at or datetime.now(UTC))


def lease_exists(conn: sqlite3.Connection, namespace: str, lease: str) -> bool:
    """Whether ``lease`` exists in ``namespace`` (read on the caller's connection)."""
    sql = "SELECT 1 FROM leases WHERE namespace=? AND id=?"
    return conn.execute(sql, (namespace, lease)).fetchone() is not None


def attach(conn: sqlite3.Connection, namespace: str, lease: str, resource: Resource) -> None:
    """Add ``resource`` to ``lease`` inside the caller's transaction (NotFound if no lease)."""
    check_resource(resource)
    if not lease_exists(conn, namespace, lease):
        raise NotFound(f"lease {lease!r} not found")
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources(namespace, lease, type, resource) VALUES (?,?,?,?)",
        (namespace, lease, resource.type, resource.id),
    )


def detach_everywhere(conn: sqlite3.Connection, namespace: str, type: str, resource: str) -> None:
    """Drop ``resource`` from every lease, inside the caller's transaction (it was deleted)."""
    conn.execute(
        "DELETE FROM lease_resources WHERE namespace=? AND type=? AND resource=?",
        (namespace, type, resource),
    )


class Namespaces(Protocol):
    """The namespace records of ``metadata.sqlite``."""

    async def list(self) -> builtins.list[Namespace]:
        """Every namespace, sorted by name."""
        ...

    async def get(self, name: str) -> Namespace:
        """One namespace, or NotFound."""
        ...

    async def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create a namespace; AlreadyExists if it exists."""
        ...

    async def update_labels(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set labels; an empty value removes that label."""
        ...

    async def delete(self, name: str) -> None:
        """Delete an empty namespace; FailedPrecondition naming what it still holds."""
        ...


class Leases(Protocol):
    """The leases of ``metadata.sqlite``: what protects an operation's objects from GC."""

    async def create(
        self,
        namespace: str,
        lease_id: str = "",
        labels: Mapping[str, str] | None = None,
        expire: timedelta | None = None,
    ) -> Lease:
        """Create a lease (id generated when empty); ``expire`` sets the gc.expire label."""
        ...

    async def get(self, namespace: str, lease_id: str) -> Lease:
        """One lease, or NotFound."""
        ...

    async def list(self, namespace: str, filters: builtins.list[str] | None = None
                   ) -> builtins.list[Lease]:
        """Leases of the namespace matching any filter."""
        ...

    async def delete(self, namespace: str, lease_id: str) -> None:
        """Delete a lease; what it held becomes collectable unless referenced elsewhere."""
        ...

    async def add_resource(self, namespace: str, lease_id: str, resource: Resource) -> None:
        """Hold ``resource`` under the lease."""
        ...

    async def delete_resource(self, namespace: str, lease_id: str, resource: Resource) -> None:
        """Release ``resource`` from the lease."""
        ...

    async def resources(self, namespace: str, lease_id: str) -> builtins.list[Resource]:
        """What the lease holds."""
        ...


class Metadata(Protocol):
    """What ``metadata.sqlite`` provides: the shared database and its own two stores."""

    @property
    def db(self) -> Database:
        """The one SQLite database the stores of other plugins keep their tables in."""
        ...

    @property
    def namespaces(self) -> Namespaces:
        """The namespace records."""
        ...

    @property
    def leases(self) -> Leases:
        """The leases."""
        ...
