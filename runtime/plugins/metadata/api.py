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
