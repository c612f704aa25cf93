"""The metadata graph: nodes, their roots and their edges, read from the SQLite tables.

A node is ``(kind, namespace, key)``, where the kind is spelled as a lease
resource type: ``content`` (digest), ``ingests`` (ref), ``images`` (name),
``snapshots/<snapshotter>`` (key), plus ``containers`` (id) and ``leases``
(id). Edges never cross namespaces.

The edges of a node are computed from a :class:`Source`, which answers
point questions about records. Two sources exist: :class:`Loaded`, every
record of a read snapshot held in memory (the mark), and :class:`Live`,
point queries on the writer's connection inside the exclusive phase (the
re-check). Both go through the same :func:`edges`, so the two phases can
never disagree on what refers to what.

A node's edges are read from its own record and nothing else. The sweep
deletes exactly the unmarked records, so a kept node keeps its record and
with it its edges: the next collection marks the same set, and one
collection reaches the fixed point. An edge read through another record
(which may be unmarked, and deleted) would keep things for one pass only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from runtime.plugins.gc.api import LABEL_EXPIRE, LABEL_ROOT
from runtime.plugins.gc.labels import expired, is_flat, is_root, label_refs, parse_time

__all__ = [
    "Container",
    "Live",
    "Loaded",
    "Node",
    "Source",
    "edges",
    "load",
    "roots",
]

#: ``(kind, namespace, key)``.
Node = tuple[str, str, str]
Labels = dict[str, str]


def _labels(raw: str | None) -> Labels:
    # Most records carry no labels: skip the JSON parser for them.
    if not raw or raw == "{}":
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def _target_digest(raw: str) -> str:
    try:
        target = json.loads(raw)
    except ValueError:
        return ""
    digest = target.get("digest", "") if isinstance(target, dict) else ""
    return digest if isinstance(digest, str) else ""


@dataclass(frozen=True, slots=True)
class Container:
    """What the graph needs of a container record."""

    snapshotter: str
    snapshot_key: str
    labels: Labels

    @classmethod
    def from_json(cls, raw: str) -> Container:
        """Read the fields from the record's JSON; missing or odd ones are empty."""
        try:
            record: Any = json.loads(raw)
        except ValueError:
            record = {}
        if not isinstance(record, dict):
            record = {}

        def text(name: str) -> str:
            value = record.get(name, "")
            return value if isinstance(value, str) else ""

        labels = record.get("labels") or {}
        return cls(
            text("snapshotter"), text("snapshot_key"), labels if isinstance(labels, dict) else {}
        )


class Source(Protocol):
    """Point questions about records; ``None`` when the record does not exist."""

    def content(self, ns: str, digest: str) -> Labels | None:
        """A blob record's labels."""
        ...

    def snapshot(self, ns: str, snapshotter: str, key: str) -> tuple[str, Labels] | None:
        """A snapshot record's parent key and labels."""
        ...

    def image(self, ns: str, name: str) -> tuple[str, Labels] | None:
        """An image's target digest and labels."""
        ...

    def container(self, ns: str, id: str) -> Container | None:
        """A container's references."""
        ...

    def lease(self, ns: str, id: str) -> tuple[Labels, list[tuple[str, str]]] | None:
        """A lease's labels and the ``(type, id)`` resources it holds."""
        ...

    def ingest(self, ns: str, ref: str) -> str | None:
        """An ingest's expected digest (``""`` when unknown)."""
        ...


def edges(source: Source, node: Node) -> Iterator[tuple[Node, bool]]:
    """The nodes ``node`` keeps alive, each with whether to follow its own edges.

    ``False`` only comes from a ``containerd.io/gc.flat`` lease: what it holds
    is kept, but not what that refers to.
    """
    kind, ns, key = node
    if kind == "content":
        labels = source.content(ns, key)
        if labels:
            yield from _refs(ns, labels)
    elif kind.startswith("snapshots/"):
        found = source.snapshot(ns, kind[len("snapshots/") :], key)
        if found is not None:
            parent, labels = found
            if parent:
                yield (kind, ns, parent), True
            yield from _refs(ns, labels)
    elif kind == "images":
        image = source.image(ns, key)
        if image is not None:
            target, labels = image
            if target:
                yield ("content", ns, target), True
            yield from _refs(ns, labels)
    elif kind == "containers":
        # Its snapshot and its labels, as in containerd; not its image's content.
        # That edge would come from the image's record, not the container's: an
        # expired image is deleted in the same pass that keeps its content, and
        # the next pass, no longer finding the image, would delete the content.
        # An edge read from the node's own record is what makes one pass reach
        # the fixed point.
        container = source.container(ns, key)
        if container is not None:
            if container.snapshotter and container.snapshot_key:
                yield (f"snapshots/{container.snapshotter}", ns, container.snapshot_key), True
            yield from _refs(ns, container.labels)
    elif kind == "leases":
        lease = source.lease(ns, key)
        if lease is not None:
            labels, resources = lease
            follow = not is_flat(labels)
            for type_, resource in resources:
                yield (type_, ns, resource), follow
    elif kind == "ingests":
        expected = source.ingest(ns, key)
        if expected:
            yield ("content", ns, expected), True


def parent_of(source: Source, node: Node) -> Node | None:
    """A snapshot's parent, or None.

    Kept even through a flat lease: a snapshot without its parent cannot be
    mounted, and the backend refuses to remove a parent anyway.
    """
    kind, ns, key = node
    if not kind.startswith("snapshots/"):
        return None
    found = source.snapshot(ns, kind[len("snapshots/") :], key)
    if found is None or not found[0]:
        return None
    return (kind, ns, found[0])


def _refs(ns: str, labels: Labels) -> Iterator[tuple[Node, bool]]:
    for kind, key in label_refs(labels):
        yield (kind, ns, key), True


@dataclass
class Loaded:
    """Every record of a read snapshot, keyed for :class:`Source` lookups.

    Labels stay JSON text until a node is expanded: a mark parses each record
    at most once, and the records nobody reaches are never parsed.
    """

    content_rows: dict[tuple[str, str], str] = field(default_factory=dict)
    #: ``(ns, snapshotter, key)`` to ``(parent, labels)``.
    snapshot_rows: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    #: ``(ns, name)`` to ``(target digest, labels)``.
    image_rows: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    container_rows: dict[tuple[str, str], str] = field(default_factory=dict)
    lease_rows: dict[tuple[str, str], str] = field(default_factory=dict)
    resource_rows: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    #: ``(ns, ref)`` to ``(expected, expires_at, backend_ref)``.
    ingest_rows: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)

    def content(self, ns: str, digest: str) -> Labels | None:
        """See :class:`Source`."""
        raw = self.content_rows.get((ns, digest))
        return None if raw is None else _labels(raw)

    def snapshot(self, ns: str, snapshotter: str, key: str) -> tuple[str, Labels] | None:
        """See :class:`Source`."""
        row = self.snapshot_rows.get((ns, snapshotter, key))
        return None if row is None else (row[0], _labels(row[1]))

    def image(self, ns: str, name: str) -> tuple[str, Labels] | None:
        """See :class:`Source`."""
        row = self.image_rows.get((ns, name))
        return None if row is None else (row[0], _labels(row[1]))

    def container(self, ns: str, id: str) -> Container | None:
        """See :class:`Source`."""
        raw = self.container_rows.get((ns, id))
        return None if raw is None else Container.from_json(raw)

    def lease(self, ns: str, id: str) -> tuple[Labels, list[tuple[str, str]]] | None:
        """See :class:`Source`."""
        raw = self.lease_rows.get((ns, id))
        return None if raw is None else (_labels(raw), self.resource_rows.get((ns, id), []))

    def ingest(self, ns: str, ref: str) -> str | None:
        """See :class:`Source`."""
        row = self.ingest_rows.get((ns, ref))
        return None if row is None else row[0]

    def nodes(self) -> Iterator[Node]:
        """Every node the sweep could delete: all but containers."""
        for ns, digest in self.content_rows:
            yield "content", ns, digest
        for ns, snapshotter, key in self.snapshot_rows:
            yield f"snapshots/{snapshotter}", ns, key
        for ns, name in self.image_rows:
            yield "images", ns, name
        for ns, id in self.lease_rows:
            yield "leases", ns, id
        for ns, ref in self.ingest_rows:
            yield "ingests", ns, ref

    def __len__(self) -> int:
        return (
            len(self.content_rows)
            + len(self.snapshot_rows)
            + len(self.image_rows)
            + len(self.container_rows)
            + len(self.lease_rows)
            + len(self.ingest_rows)
        )


def load(conn: sqlite3.Connection) -> Loaded:
    """Read every record the graph needs; call inside one read transaction."""
    loaded = Loaded()
    run = conn.execute
    loaded.content_rows = {
        (r[0], r[1]): r[2] for r in run("SELECT namespace, digest, labels FROM content")
    }
    loaded.snapshot_rows = {
        (r[0], r[1], r[2]): (r[3], r[4])
        for r in run("SELECT namespace, snapshotter, key, parent, labels FROM snapshots")
    }
    loaded.image_rows = {
        (r[0], r[1]): (_target_digest(r[2]), r[3])
        for r in run("SELECT namespace, name, target, labels FROM images")
    }
    loaded.container_rows = {
        (r[0], r[1]): r[2] for r in run("SELECT namespace, id, record FROM containers")
    }
    loaded.lease_rows = {
        (r[0], r[1]): r[2] for r in run("SELECT namespace, id, labels FROM leases")
    }
    for r in run("SELECT namespace, lease, type, resource FROM lease_resources"):
        loaded.resource_rows.setdefault((r[0], r[1]), []).append((r[2], r[3]))
    loaded.ingest_rows = {
        (r[0], r[1]): (r[2], r[3], r[4])
        for r in run("SELECT namespace, ref, expected, expires_at, backend_ref FROM ingests")
    }
    return loaded


def roots(loaded: Loaded, at: datetime, active_ingests: Iterable[str]) -> Iterator[Node]:
    """The roots at time ``at``.

    Images unless expired, every container, leases unless expired, content and
    snapshots labelled ``containerd.io/gc.root``, and live ingests: an ingest
    with an expiry lives until then, one without while its backend ingest
    (one of ``active_ingests``, backend refs) exists.
    """
    # Substring tests first: parsing every record's labels to find a rare label is waste.
    for (ns, name), (_, raw) in loaded.image_rows.items():
        if LABEL_EXPIRE not in raw or not expired(_labels(raw), at):
            yield "images", ns, name
    for ns, id in loaded.container_rows:
        yield "containers", ns, id
    for (ns, id), raw in loaded.lease_rows.items():
        if LABEL_EXPIRE not in raw or not expired(_labels(raw), at):
            yield "leases", ns, id
    for (ns, digest), raw in loaded.content_rows.items():
        if LABEL_ROOT in raw and is_root(_labels(raw)):
            yield "content", ns, digest
    for (ns, snapshotter, key), (_, raw) in loaded.snapshot_rows.items():
        if LABEL_ROOT in raw and is_root(_labels(raw)):
            yield f"snapshots/{snapshotter}", ns, key
    active = set(active_ingests)
    for (ns, ref), (_, expires_at, backend_ref) in loaded.ingest_rows.items():
        expiry = parse_time(expires_at)
        if (expiry > at) if expiry is not None else (backend_ref in active):
            yield "ingests", ns, ref


class Live:
    """:class:`Source` by point queries on a connection (the exclusive phase)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _one(self, sql: str, *args: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
        return row

    def content(self, ns: str, digest: str) -> Labels | None:
        """See :class:`Source`."""
        row = self._one("SELECT labels FROM content WHERE namespace=? AND digest=?", ns, digest)
        return None if row is None else _labels(row[0])

    def snapshot(self, ns: str, snapshotter: str, key: str) -> tuple[str, Labels] | None:
        """See :class:`Source`."""
        row = self._one(
            "SELECT parent, labels FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
            ns,
            snapshotter,
            key,
        )
        return None if row is None else (row[0], _labels(row[1]))

    def image(self, ns: str, name: str) -> tuple[str, Labels] | None:
        """See :class:`Source`."""
        row = self._one("SELECT target, labels FROM images WHERE namespace=? AND name=?", ns, name)
        return None if row is None else (_target_digest(row[0]), _labels(row[1]))

    def container(self, ns: str, id: str) -> Container | None:
        """See :class:`Source`."""
        row = self._one("SELECT record FROM containers WHERE namespace=? AND id=?", ns, id)
        return None if row is None else Container.from_json(row[0])

    def lease(self, ns: str, id: str) -> tuple[Labels, list[tuple[str, str]]] | None:
        """See :class:`Source`."""
        row = self._one("SELECT labels FROM leases WHERE namespace=? AND id=?", ns, id)
        if row is None:
            return None
        held = self.conn.execute(
            "SELECT type, resource FROM lease_resources WHERE namespace=? AND lease=?", (ns, id)
        ).fetchall()
        return _labels(row[0]), [(r[0], r[1]) for r in held]

    def ingest(self, ns: str, ref: str) -> str | None:
        """See :class:`Source`."""
        row = self._one("SELECT expected FROM ingests WHERE namespace=? AND ref=?", ns, ref)
        return None if row is None else str(row[0])
