"""The metadata graph: every source's records behind one set of questions.

A node is ``(kind, namespace, key)`` (see :data:`~runtime.plugins.gc.api.Node`);
edges never cross namespaces. Each store's
:class:`~runtime.plugins.gc.api.Source` answers for the kinds it owns; a
:class:`Graph` sends each question to the owner of the node's kind. Two
graphs exist per collection: :class:`LoadedGraph`, every record of a read
snapshot held in memory (the mark), and the graph of live point queries on the
writer's connection inside the exclusive phase (the re-check). Both ask the
same sources, so the two phases can never disagree on what refers to what.

A node of a kind no source owns (a lease holding a resource type nobody
records) is kept when reached, with no edges: there is no record to delete.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime

from runtime.plugins.gc.api import Edge, Loaded, Node, Records, Source

__all__ = ["Graph", "LoadedGraph", "Node", "live", "load"]


class Graph:
    """Records of several sources, each question answered by the owner of the node's kind."""

    def __init__(self, parts: Sequence[tuple[Source, Records]]) -> None:
        self.parts = list(parts)
        self._by_kind: dict[str, Records | None] = {}

    def part(self, kind: str) -> Records | None:
        """The records of the source owning ``kind``, or None."""
        try:
            return self._by_kind[kind]
        except KeyError:
            found = next((r for s, r in self.parts if s.owns(kind)), None)
            self._by_kind[kind] = found
            return found

    def edges(self, node: Node) -> Iterable[Edge]:
        """The nodes ``node`` keeps alive, each with whether to follow its own edges."""
        part = self.part(node[0])
        return () if part is None else part.edges(node)

    def parent(self, node: Node) -> Node | None:
        """A node kept even through a flat lease (a snapshot's parent), or None."""
        part = self.part(node[0])
        return None if part is None else part.parent(node)


class LoadedGraph(Graph):
    """Every source's records of one read snapshot."""

    def __init__(self, parts: Sequence[tuple[Source, Loaded]]) -> None:
        super().__init__(parts)
        self.loaded = [loaded for _, loaded in parts]
        self._owners = [source for source, _ in parts]

    def roots(self, at: datetime) -> Iterator[Node]:
        """The roots at time ``at``, every source's."""
        return itertools.chain.from_iterable(loaded.roots(at) for loaded in self.loaded)

    def nodes(self) -> Iterator[Node]:
        """Every node the sweep could delete."""
        return itertools.chain.from_iterable(loaded.nodes() for loaded in self.loaded)

    def __len__(self) -> int:
        return sum(len(loaded) for loaded in self.loaded)

    async def observe(self) -> None:
        """Let each source consult its backend (after the snapshot began)."""
        for loaded in self.loaded:
            await loaded.observe()

    async def revived(self, candidates: Collection[Node]) -> set[Node]:
        """The candidates some backend shows alive since :meth:`observe`."""
        revived: set[Node] = set()
        for source, loaded in zip(self._owners, self.loaded, strict=True):
            owned = [n for n in candidates if source.owns(n[0])]
            if owned:
                revived |= await loaded.revived(owned)
        return revived


def load(conn: sqlite3.Connection, sources: Iterable[Source]) -> LoadedGraph:
    """Read every source's records; call inside one read transaction."""
    return LoadedGraph([(source, source.load(conn)) for source in sources])


def live(conn: sqlite3.Connection, sources: Iterable[Source]) -> Graph:
    """Point queries on ``conn`` (the writer's, inside the exclusive phase)."""
    return Graph([(source, source.live(conn)) for source in sources])
