"""The metadata plugin's contract: records and events other plugins may import."""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["Namespace", "NamespaceCreate", "NamespaceDelete", "NamespaceUpdate"]


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
