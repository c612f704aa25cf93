"""The exclusive phase: re-check what changed during the mark, then delete the records.

Runs as one write transaction (writers wait for it), so a crash leaves either
every record of the collection or none deleted. Only records go here: bytes
on disk are removed afterwards by :mod:`runtime.plugins.gc.disk`, computed
again from the committed records.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence

import msgspec

from runtime.plugins.gc import changes
from runtime.plugins.gc.api import Node, Source
from runtime.plugins.gc.graph import live
from runtime.plugins.gc.mark import Marking, rescue

__all__ = ["SweepResult", "delete_records", "sweep"]


class SweepResult(msgspec.Struct):
    """What the exclusive phase did.

    Attributes:
        changed: Records written during the mark (the change log's size).
        rescued: Candidates kept because those writes made them reachable.
        deleted: Records deleted, per kind.
    """

    changed: int = 0
    rescued: int = 0
    deleted: dict[str, int] = msgspec.field(default_factory=dict)


def sweep(
    conn: sqlite3.Connection,
    sources: Sequence[Source],
    candidates: set[Node],
    marking: Marking,
    revived: Iterable[Node] = (),
) -> SweepResult:
    """Re-check ``candidates`` against the writes since the mark and delete the rest.

    Call inside the write transaction; ``candidates`` is modified in place.
    ``revived`` are nodes found alive since the mark by other means than the
    change log (ingests whose backend came back): rescued like the writes.
    """
    changed = changes.drain(conn, sources)
    rescued = rescue(live(conn, sources), changed | set(revived), candidates, marking)
    return SweepResult(
        changed=len(changed),
        rescued=len(rescued),
        deleted=delete_records(conn, sources, candidates),
    )


def delete_records(
    conn: sqlite3.Connection, sources: Sequence[Source], nodes: set[Node]
) -> dict[str, int]:
    """Delete the records of ``nodes``, each through its source; return counts per kind.

    A node no source owns has no record. No lease_resources rows are dropped
    for the other kinds: a live lease makes what it holds reachable, and an
    expired one goes with its rows. (A by-resource delete would also scan that
    table once per object, inside the pause.)
    """
    by_source: dict[int, list[Node]] = defaultdict(list)
    owner_of: dict[str, int | None] = {}
    for node in nodes:
        kind = node[0]
        if kind not in owner_of:
            owner_of[kind] = next((i for i, s in enumerate(sources) if s.owns(kind)), None)
        owner = owner_of[kind]
        if owner is not None:
            by_source[owner].append(node)
    counts: dict[str, int] = {}
    for index, owned in sorted(by_source.items()):
        for kind, count in sources[index].delete(conn, owned).items():
            counts[kind] = counts.get(kind, 0) + count
    return counts
