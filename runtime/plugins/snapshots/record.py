"""One stored snapshot as the backends see it: :class:`Record`."""

from __future__ import annotations

from datetime import datetime
from typing import final

import msgspec

from runtime.plugins.snapshots.api import Info, Kind, Usage

__all__ = ["Record"]


@final
class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One stored snapshot.

    Attributes:
        id: The integer id; the data lives in ``<root>/snapshots/<id>``. Kept
            short on purpose: overlay option strings hold one path per layer.
        key: The key (active, view) or name (committed).
        kind: Active, view or committed.
        parent: The parent's name, ``""`` for none.
        parent_id: The parent's id, ``None`` for none.
        labels: The labels.
        created: Creation (or commit) time, UTC.
        updated: Last label change, UTC.
        size: Bytes recorded at commit (0 until then).
        inodes: Inodes recorded at commit (0 until then).
    """

    id: int
    key: str
    kind: Kind
    parent: str
    parent_id: int | None
    labels: dict[str, str]
    created: datetime
    updated: datetime
    size: int = 0
    inodes: int = 0

    def info(self) -> Info:
        """The public view of this record."""
        return Info(
            kind=self.kind,
            name=self.key,
            parent=self.parent,
            labels=dict(self.labels),
            created_at=self.created,
            updated_at=self.updated,
        )

    def usage(self) -> Usage:
        """The usage recorded at commit (zero for active and view snapshots)."""
        return Usage(size=self.size, inodes=self.inodes)
