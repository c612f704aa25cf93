"""Events of the snapshot service."""

from __future__ import annotations

import msgspec

__all__ = ["SnapshotCommit", "SnapshotPrepare", "SnapshotRemove"]


class SnapshotPrepare(msgspec.Struct, kw_only=True):
    """Event ``/snapshot/prepare``."""

    key: str
    parent: str = ""
    snapshotter: str


class SnapshotCommit(msgspec.Struct, kw_only=True):
    """Event ``/snapshot/commit``."""

    key: str
    name: str
    snapshotter: str


class SnapshotRemove(msgspec.Struct, kw_only=True):
    """Event ``/snapshot/remove``."""

    key: str
    snapshotter: str
