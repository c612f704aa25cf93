"""Marking: which nodes are reachable from the roots, and the re-check after concurrent writes.

The mark is containerd's tricolor mark with a gray stack (depth first), with
one twist for ``containerd.io/gc.flat`` leases: a node can be *kept* without
being *expanded* (its own edges not followed). A node first reached through
a flat lease and later through a normal edge is expanded then.

The mark runs on a read snapshot while writers go on. :func:`rescue` then
runs inside the exclusive phase, from the nodes written since the snapshot
(the change log): it expands them over the live records, and keeps walking
only into nodes whose edges the mark did not follow. A node the mark
expanded had its edges followed already; if its edges changed since, its
write is in the change log, so it is a starting point of its own. That keeps
the exclusive phase proportional to what changed, not to the store.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from runtime.plugins.gc.api import Node, Records

__all__ = ["Marking", "mark", "rescue"]


class Marking(msgspec.Struct):
    """The outcome of a mark.

    Attributes:
        kept: Every node reached (existing or not: an edge may dangle).
        expanded: The nodes whose edges were followed.
    """

    kept: set[Node] = msgspec.field(default_factory=set)
    expanded: set[Node] = msgspec.field(default_factory=set)


def mark(source: Records, roots: Iterable[Node]) -> Marking:
    """Mark everything reachable from ``roots`` in ``source``."""
    marking = Marking()
    kept, expanded = marking.kept, marking.expanded
    gray: list[tuple[Node, bool]] = [(root, True) for root in roots]
    while gray:
        node, follow = gray.pop()
        kept.add(node)
        if not follow:
            parent = source.parent(node)
            if parent is not None and parent not in kept:
                gray.append((parent, False))
            continue
        if node in expanded:
            continue
        expanded.add(node)
        for child, child_follow in source.edges(node):
            if child not in expanded and (child_follow or child not in kept):
                gray.append((child, child_follow))
    return marking


def rescue(
    source: Records, changed: Iterable[Node], candidates: set[Node], marking: Marking
) -> set[Node]:
    """Take out of ``candidates`` whatever the writes since the mark made reachable.

    Args:
        source: The live records (inside the exclusive phase).
        changed: Nodes inserted or updated since the mark's snapshot. They
            are treated as roots: conservative, since a write during the
            collection is a sign of interest anyway.
        candidates: Nodes about to be deleted; modified in place.
        marking: The mark's outcome, to know which nodes need expanding.

    Returns:
        The candidates taken out.
    """
    rescued: set[Node] = set()
    done: set[Node] = set()
    # (node, follow its edges, expand even if the mark did: its edges may have changed)
    gray: list[tuple[Node, bool, bool]] = [(node, True, True) for node in changed]
    while gray:
        node, follow, changed_node = gray.pop()
        if node in candidates:
            candidates.discard(node)
            rescued.add(node)
        if not follow:
            parent = source.parent(node)
            if parent is not None and parent in candidates:
                gray.append((parent, False, False))
            continue
        if node in done or (not changed_node and node in marking.expanded):
            continue
        done.add(node)
        for child, child_follow in source.edges(node):
            gray.append((child, child_follow, False))
    return rescued
