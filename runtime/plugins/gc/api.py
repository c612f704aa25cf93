"""The garbage collector's contract: the labels it reads, the report it returns, its event.

This is the only module of the package other code imports (the API route set,
the client and the CLI): it needs msgspec and nothing else.

Labels (containerd's spelling, see ``docs/containerd-model.md`` section 10):

* ``containerd.io/gc.root`` on content or a snapshot, any non-empty value:
  the object is a root.
* ``containerd.io/gc.ref.content`` (also ``.content.<x>`` and ``.content/<x>``),
  value a digest: the labelled object keeps that blob of its namespace.
* ``containerd.io/gc.ref.snapshot.<snapshotter>`` (also ``.../<x>``), value a
  snapshot key: keeps that snapshot.
* ``containerd.io/gc.ref.image`` (also ``.image.<x>``, ``.image/<x>``), value an
  image name: keeps that image.
* ``containerd.io/gc.expire`` (RFC 3339) on a lease or an image: past that time
  the object is no longer a root.
* ``containerd.io/gc.flat`` on a lease: its resources are kept, but their
  labels are not followed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

__all__ = [
    "EVENT_NAMESPACE",
    "EVENT_TOPIC",
    "LABEL_EXPIRE",
    "LABEL_FLAT",
    "LABEL_REF_CONTENT",
    "LABEL_REF_IMAGE",
    "LABEL_REF_SNAPSHOT",
    "LABEL_ROOT",
    "Collections",
    "GCReport",
    "Removed",
]

LABEL_ROOT = "containerd.io/gc.root"
LABEL_REF_CONTENT = "containerd.io/gc.ref.content"
#: Followed by ``<snapshotter>`` and optionally ``/<name>``.
LABEL_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_REF_IMAGE = "containerd.io/gc.ref.image"
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"

#: Topic of the event published after each collection, with a :class:`GCReport`.
EVENT_TOPIC = "/gc/run"
#: A collection spans every namespace, but an event envelope needs one: this.
EVENT_NAMESPACE = "moorage"


class Removed(msgspec.Struct, kw_only=True):
    """What one collection removed of one kind of object.

    Attributes:
        records: Metadata records deleted (summed over namespaces).
        disk: Objects removed from a backend (blobs, snapshots, ingests).
        bytes: Bytes those backend objects held.
    """

    records: int = 0
    disk: int = 0
    bytes: int = 0


class GCReport(msgspec.Struct, kw_only=True):
    """The figures of one collection; also the payload of the ``/gc/run`` event.

    Attributes:
        started_at: When the mark began (UTC). Objects newer than this were
            kept whatever their reachability.
        removed: Per kind: ``content``, ``ingests``, ``images``, ``leases`` and
            ``snapshots/<snapshotter>``.
        live: Objects found reachable (kept).
        rescued: Objects unreachable in the mark's read snapshot but made
            reachable by a write during the mark, hence kept.
        mark_seconds: The mark, on a read snapshot; writers were not held.
        pause_seconds: The exclusive phase (re-check and delete records):
            the time writers were held back.
        lock_seconds: Every hold of the writer lock by this collection, the
            pause included (the disk phase re-checks blobs under it).
        disk_seconds: Removing backend objects.
        total_seconds: The whole collection.
    """

    started_at: datetime
    removed: dict[str, Removed] = msgspec.field(default_factory=dict)
    live: int = 0
    rescued: int = 0
    mark_seconds: float = 0.0
    pause_seconds: float = 0.0
    lock_seconds: float = 0.0
    disk_seconds: float = 0.0
    total_seconds: float = 0.0

    def kind(self, kind: str) -> Removed:
        """The figures of ``kind``, created (as zeros) if missing."""
        return self.removed.setdefault(kind, Removed())

    @property
    def bytes_removed(self) -> int:
        """Bytes freed on disk, every kind together."""
        return sum(r.bytes for r in self.removed.values())


class Collections(Protocol):
    """What ``gc.scheduler`` provides: collections on demand (``DELETE ...?sync=1``)."""

    async def collect(self) -> GCReport:
        """Run one collection now and return its report."""
        ...

    async def schedule_and_wait(self) -> GCReport:
        """Ask for a collection soon (joining one already queued) and wait for its report."""
        ...
