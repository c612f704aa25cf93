"""The exclusive phase: re-check what changed during the mark, then delete the records.

Runs as one write transaction (writers wait for it), so a crash leaves either
every record of the collection or none deleted. Only records go here: bytes
on disk are removed afterwards by :mod:`runtime.plugins.gc.disk`, computed
again from the committed records.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from runtime.plugins.gc import changes
from runtime.plugins.gc.graph import Live, Node
from runtime.plugins.gc.mark import Marking, rescue

__all__ = ["SweepResult", "delete_records", "sweep"]

# kind -> the statement deleting one record of that kind, by (namespace, key).
_DELETE = {
    "content": "DELETE FROM content WHERE namespace=? AND digest=?",
    "images": "DELETE FROM images WHERE namespace=? AND name=?",
    "ingests": "DELETE FROM ingests WHERE namespace=? AND ref=?",
    "leases": "DELETE FROM leases WHERE namespace=? AND id=?",
}


@dataclass
class SweepResult:
    """What the exclusive phase did.

    Attributes:
        changed: Records written during the mark (the change log's size).
        rescued: Candidates kept because those writes made them reachable.
        deleted: Records deleted, per kind.
    """

    changed: int = 0
    rescued: int = 0
    deleted: dict[str, int] = field(default_factory=dict)


def sweep(
    conn: sqlite3.Connection,
    candidates: set[Node],
    marking: Marking,
    revived: Iterable[Node] = (),
) -> SweepResult:
    """Re-check ``candidates`` against the writes since the mark and delete the rest.

    Call inside the write transaction; ``candidates`` is modified in place.
    ``revived`` are nodes found alive since the mark by other means than the
    change log (ingests whose backend came back): rescued like the writes.
    """
    changed = changes.drain(conn)
    rescued = rescue(Live(conn), changed | set(revived), candidates, marking)
    return SweepResult(
        changed=len(changed), rescued=len(rescued), deleted=delete_records(conn, candidates)
    )


def delete_records(conn: sqlite3.Connection, nodes: set[Node]) -> dict[str, int]:
    """Delete the records of ``nodes`` (never containers); return counts per kind."""
    by_kind: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for kind, ns, key in nodes:
        if kind.startswith("snapshots/"):
            by_kind[kind].append((ns, kind[len("snapshots/") :], key))
        elif kind in _DELETE:
            by_kind[kind].append((ns, key))
    counts: dict[str, int] = {}
    for kind, rows in sorted(by_kind.items()):
        if kind == "leases":
            conn.executemany("DELETE FROM lease_resources WHERE namespace=? AND lease=?", rows)
        sql = _DELETE.get(kind) or (
            "DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?"
        )
        counts[kind] = conn.executemany(sql, rows).rowcount
    # No lease_resources rows to drop for the other kinds: a live lease makes what it
    # holds reachable, and an expired one goes above with its rows. (A by-resource
    # delete would also scan that table once per object, inside the pause.)
    return counts
