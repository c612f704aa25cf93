"""The metadata plugin's contract: records, events, and what stores sharing its database use.

Stores of other plugins (content, images, containers, snapshots) keep their
records in the one SQLite database ``metadata.sqlite`` opens: they are handed its
:class:`Database`, register their tables there as a :class:`Schema` (with the
garbage collector's ``Source`` over them), create a record's namespace with
:func:`ensure_namespace` and add it to a lease with :func:`attach`, inside
their own transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import msgspec

from runtime.core.errors import InvalidArgument, NotFound
from runtime.core.identifiers import validate_namespace
from runtime.plugins.metadata.db import Database, sqlite_errors
from runtime.plugins.metadata.schema import Schema

__all__ = [
    "RESOURCE_TYPES",
    "Database",
    "Lease",
    "Namespace",
    "NamespaceCreate",
    "NamespaceDelete",
    "NamespaceUpdate",
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
