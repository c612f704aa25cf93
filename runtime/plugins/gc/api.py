"""The garbage collector's contract: the labels it reads, the report it returns, its event.

This is the only module of the package other code imports (the API route set,
the client, the CLI, and the stores that implement :class:`Source`): it needs
msgspec and the standard library. A store subclasses :class:`Source` and
:class:`Loaded` explicitly to inherit the defaults (no backend, no expiry);
loaded records that are a ``msgspec.Struct`` take :class:`Loaded`'s from
:class:`LoadedDefaults` instead.

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

import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Protocol

import msgspec

from runtime.plugins.gc.labels import (
    LABEL_EXPIRE,
    LABEL_FLAT,
    LABEL_REF_CONTENT,
    LABEL_REF_IMAGE,
    LABEL_REF_SNAPSHOT,
    LABEL_ROOT,
    expire_time,
    expired,
    is_flat,
    is_root,
    label_refs,
    labels_of,
    parse_time,
)

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
    "Edge",
    "GCReport",
    "Loaded",
    "LoadedDefaults",
    "Node",
    "Records",
    "Removed",
    "Source",
    "expire_time",
    "expired",
    "expiries_in",
    "is_flat",
    "is_root",
    "label_edges",
    "label_refs",
    "labels_of",
    "parse_time",
]

#: ``(kind, namespace, key)``. Kinds are spelled as lease resource types:
#: ``content`` (digest), ``ingests`` (ref), ``images`` (name),
#: ``snapshots/<snapshotter>`` (key), plus ``containers`` and ``leases`` (id).
Node = tuple[str, str, str]
#: A node kept alive, and whether its own edges are followed (False only
#: through a ``containerd.io/gc.flat`` lease).
Edge = tuple[Node, bool]


def label_edges(ns: str, labels: Mapping[str, str]) -> Iterator[Edge]:
    """The edges a record's ``containerd.io/gc.ref.*`` labels make, in its namespace ``ns``."""
    for kind, key in label_refs(labels):
        yield (kind, ns, key), True


def expiries_in(conn: sqlite3.Connection, table: str) -> Iterator[datetime]:
    """The ``containerd.io/gc.expire`` times on ``table``'s rows (labels: JSON in ``labels``)."""
    sql = f"SELECT labels FROM {table} WHERE labels LIKE ?"
    for (raw,) in conn.execute(sql, (f"%{LABEL_EXPIRE}%",)):
        when = expire_time(labels_of(raw))
        if when is not None:
            yield when


class Records(Protocol):
    """One source's records as one reader sees them, for the nodes the source owns.

    Two readers exist: the mark's read snapshot (:meth:`Source.load`) and
    point queries on the writer's connection inside the exclusive phase
    (:meth:`Source.live`). A source answers both from the same rules, so the
    two phases never disagree on what refers to what. A node's edges come
    from its own record only: a kept node keeps its record, so one collection
    reaches the fixed point.
    """

    def edges(self, node: Node) -> Iterable[Edge]:
        """What ``node`` keeps alive (nothing if its record does not exist)."""
        ...

    def parent(self, node: Node) -> Node | None:
        """A node kept even through a flat lease (a snapshot's parent), or None."""
        ...


class Loaded(Records, Protocol):
    """A source's records read in the mark's snapshot, held in memory."""

    def roots(self, at: datetime) -> Iterable[Node]:
        """The nodes alive by their records alone at ``at`` (after :meth:`observe`)."""
        ...

    def nodes(self) -> Iterable[Node]:
        """Every node whose record the sweep may delete."""
        ...

    def __len__(self) -> int:
        """How many records were loaded (the collectible ones and the rest)."""
        ...

    async def observe(self) -> None:
        """Consult the backend once the read snapshot began (content: uploads in progress)."""
        return None

    async def revived(self, candidates: Collection[Node]) -> set[Node]:
        """The ``candidates`` the backend shows alive since :meth:`observe` (kept as roots)."""
        return set()


class LoadedDefaults:
    """:class:`Loaded`'s defaults (no backend to consult) for loaded records that are Structs.

    A ``msgspec.Struct`` cannot subclass a Protocol (their metaclasses
    conflict), so it takes the defaults from this plain mixin and satisfies
    :class:`Loaded` structurally.
    """

    __slots__ = ()

    async def observe(self) -> None:
        """Nothing to consult: see :meth:`Loaded.observe`."""
        return None

    async def revived(self, candidates: Collection[Node]) -> set[Node]:
        """Nothing revived: see :meth:`Loaded.revived`."""
        return set()


class Source(Protocol):
    """What one store tells the collector about the records in its tables.

    A store registers its source with the metadata database next to its
    tables (``Database.register``); the collector walks every registered
    source and reads no table itself. The source's methods run inside the
    collector's transactions, on the connection they are given.

    Attributes:
        name: The owner of the tables (as registered with the database).
        logged: Per table, SQL expressions over ``NEW`` giving the node kind
            and key a write to that row changes (the change log's triggers).
    """

    name: str
    logged: Mapping[str, tuple[str, str]]

    def owns(self, kind: str) -> bool:
        """Whether nodes of ``kind`` are this source's records."""
        ...

    def load(self, conn: sqlite3.Connection) -> Loaded:
        """Read every record the graph needs (inside the mark's read transaction)."""
        ...

    def live(self, conn: sqlite3.Connection) -> Records:
        """Point queries on ``conn`` (inside the exclusive phase)."""
        ...

    def delete(self, conn: sqlite3.Connection, nodes: Collection[Node]) -> dict[str, int]:
        """Delete the records of ``nodes`` (all owned); return counts per kind."""
        ...

    def expiries(self, conn: sqlite3.Connection) -> Iterable[datetime]:
        """Every ``containerd.io/gc.expire`` time on the records (when to collect next)."""
        return ()

    def backend_refs(self, conn: sqlite3.Connection, backend: str) -> set[str]:
        """The objects of ``backend`` the records refer to.

        Backends: ``content`` (blob digests), ``ingests`` (backend ingest refs),
        ``snapshots/<snapshotter>`` (backend keys). Empty for one it does not know.
        """
        return set()

    def refers_to(self, conn: sqlite3.Connection, backend: str, key: str) -> bool:
        """Whether a record refers to object ``key`` of ``backend`` (the disk phase's re-check)."""
        return False


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
