"""The volume contract: the record and the request bodies (msgspec only)."""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["Volume", "VolumeCreateRequest", "VolumePruneReport"]


class Volume(msgspec.Struct, kw_only=True):
    """A named volume.

    Attributes:
        name: Unique within the namespace (identifier rules).
        mountpoint: The host directory a container mounts (bind source).
        labels: Free-form labels.
        created_at: When it was created.
        used_by: Containers of the namespace whose spec mounts it.
    """

    name: str
    mountpoint: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    created_at: datetime | None = None
    used_by: list[str] = msgspec.field(default_factory=list)


class VolumeCreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/volumes``; ``exist_ok`` answers an existing volume instead of 409."""

    name: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    exist_ok: bool = False


class VolumePruneReport(msgspec.Struct, kw_only=True):
    """``POST /v1/volumes/prune``: the volumes removed (none was in use)."""

    removed: list[str] = msgspec.field(default_factory=list)
