"""One collection: mark on a read snapshot, sweep records in a short exclusive phase, then disk.

Phases, and what writers (every other plugin) experience during each:

1. **Start** (a tiny write): the change log starts recording writes.
2. **Mark** (no lock): a second, read-only SQLite connection opens a WAL read
   transaction, loads the records and marks from the roots, in a worker
   thread. Writers go on; their writes land in the change log.
3. **Sweep** (one write transaction: the pause): the change log is drained,
   whatever it made reachable is taken out of the candidates
   (:func:`runtime.plugins.gc.mark.rescue`) and the remaining candidates'
   records are deleted. Its cost follows what changed and what is deleted,
   not the size of the store.
4. **Disk** (brief locks): backend objects no record refers to are removed
   (:mod:`runtime.plugins.gc.disk`).

A crash between 3 and 4 (fault point ``gc.after-sweep``) leaves unreferenced
bytes, which phase 4 of the next collection finds from the records alone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import anyio.to_thread
import msgspec

from runtime.core.errors import FailedPrecondition, Unavailable
from runtime.core.faults import fault_point
from runtime.plugins.content.api import Store as ContentStore
from runtime.plugins.gc import changes
from runtime.plugins.gc.api import GCReport, Node, Source
from runtime.plugins.gc.disk import DiskSweeper, Since, fs_clock_ns
from runtime.plugins.gc.graph import LoadedGraph, load
from runtime.plugins.gc.locking import timed_write
from runtime.plugins.gc.mark import Marking, mark
from runtime.plugins.gc.sweep import SweepResult, sweep
from runtime.plugins.metadata.api import Database, sqlite_errors
from runtime.plugins.snapshots.api import Snapshotter

__all__ = ["Collector", "Marked"]

T = TypeVar("T")

#: The fault point between the record sweep and the disk phase.
FAULT_AFTER_SWEEP = "gc.after-sweep"
#: How long a collection waits for the stores whose tables are in the database
#: to register (at start, the collector may be up before some of them).
OWNERS_WAIT = 10.0


class Marked(msgspec.Struct):
    """The outcome of :meth:`Collector.mark`, input of :meth:`Collector.sweep`.

    Attributes:
        since: When the collection started.
        sources: The sources it walks (the same in every phase).
        loaded: The records of the read snapshot.
        marking: What the mark reached.
        candidates: Existing nodes it did not reach: what the sweep deletes
            unless a concurrent write rescues them.
        held: Seconds the writer lock was held (to start the change log).
    """

    since: Since
    sources: Sequence[Source]
    loaded: LoadedGraph
    marking: Marking
    candidates: set[Node]
    held: float = 0.0


class Collector:
    """Garbage collection over the metadata database and the backends.

    The records are read through the :class:`~runtime.plugins.gc.api.Source`
    each store registered with the database, never from its tables directly.

    Args:
        db: The metadata database.
        store: The content backend, or None (content bytes are then left alone).
        snapshotters: Snapshotter backends by name, as the records name them.
        in_flight: Per snapshotter name, whether a backend key is being made
            by the snapshot service and not yet recorded (its ``in_flight``);
            the disk phase leaves those alone.

    One collection runs at a time; :meth:`collect` callers queue. Use one
    collector per database: the change log lives on the database's connection.
    """

    def __init__(
        self,
        db: Database,
        store: ContentStore | None = None,
        snapshotters: Mapping[str, Snapshotter] | None = None,
        in_flight: Mapping[str, Callable[[str], bool]] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.disk = DiskSweeper(db, store, snapshotters or {}, in_flight)
        self._lock = anyio.Lock()

    async def collect(self) -> GCReport:
        """Run a whole collection and return its figures."""
        async with self._lock:
            started = time.perf_counter()
            marked = await self.mark()
            report = GCReport(started_at=marked.since.wall)
            report.mark_seconds = time.perf_counter() - started
            await self.sweep(marked, report)
            # Records are gone, bytes not yet: a crash here must leave a consistent store.
            fault_point(FAULT_AFTER_SWEEP)
            disk_started = time.perf_counter()
            await self.disk.run(marked.since, report)
            report.disk_seconds = time.perf_counter() - disk_started
            report.total_seconds = time.perf_counter() - started
            return report

    async def mark(self) -> Marked:
        """Phases 1 and 2: start the change log, then mark on a read snapshot.

        Raises:
            FailedPrecondition: A store has records in the database but has
                not registered its source (its plugin is not running): what
                those records keep would be lost.
        """
        sources = await self._sources()
        # Taken before the log starts, so "created after the start" errs towards keeping.
        since = Since(
            wall=datetime.now(UTC),
            fs_ns=await anyio.to_thread.run_sync(
                fs_clock_ns, self.store.root if self.store is not None else None
            ),
        )
        _, held = await timed_write(self.db, lambda c: changes.start(c, sources))
        try:
            loaded = await self._snapshot(lambda c: load(c, sources))
            # After the snapshot began: an ingest recorded in it was on disk first.
            await loaded.observe()

            def compute() -> tuple[Marking, set[Node]]:
                marking = mark(loaded, loaded.roots(since.wall))
                return marking, {n for n in loaded.nodes() if n not in marking.kept}

            marking, candidates = await anyio.to_thread.run_sync(compute)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.db.write(lambda c: changes.stop(c, sources))
            raise
        return Marked(since, sources, loaded, marking, candidates, held)

    async def _sources(self) -> list[Source]:
        """Every registered source, once each store with tables in the file registered."""
        deadline = time.monotonic() + OWNERS_WAIT
        while missing := await anyio.to_thread.run_sync(self.db.owners_not_registered):
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    "garbage collection needs every store with records in the metadata "
                    f"database; not running: {', '.join(missing)}"
                )
            await anyio.sleep(0.05)
        return self.db.sources

    async def sweep(self, marked: Marked, report: GCReport) -> SweepResult:
        """Phase 3: the exclusive re-check and deletion of records; fills ``report``."""
        # Found alive by a backend since the mark: roots now, like the change log's writes,
        # and rescued with them (dropping them from the candidates alone would keep an
        # ingest but not the content it expects).
        revived = await marked.loaded.revived(marked.candidates)
        sources = marked.sources

        def exclusive(conn: sqlite3.Connection) -> SweepResult:
            if len(self.db.sources) != len(sources):
                # A store registered during the mark: its writes were not logged.
                raise Unavailable("a store registered during the collection; collect again")
            return sweep(conn, sources, marked.candidates, marked.marking, revived)

        try:
            result, held = await timed_write(self.db, exclusive)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.db.write(lambda c: changes.stop(c, sources))
            raise
        report.pause_seconds = held
        report.lock_seconds += marked.held + held
        report.rescued = result.rescued
        report.live = len(marked.loaded) - sum(result.deleted.values())
        for kind, count in result.deleted.items():
            report.kind(kind).records += count
        return result

    async def next_expiry(self, after: datetime | None = None) -> datetime | None:
        """The earliest ``containerd.io/gc.expire`` on any record, later than ``after``.

        Read on a snapshot connection: it never waits for, nor holds back, writers.
        """
        sources = self.db.sources

        def query(conn: sqlite3.Connection) -> list[datetime]:
            return [t for source in sources for t in source.expiries(conn)]

        found = [t for t in await self._snapshot(query) if after is None or t > after]
        return min(found, default=None)

    async def _snapshot(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one read transaction on a private read-only connection.

        In WAL mode the transaction sees the database as of its first read
        while the writer connection commits on: that is what lets the mark
        run without holding writers back.
        """
        uri = self.db.path.resolve().as_uri() + "?mode=ro"

        def run() -> T:
            with sqlite_errors():
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30
                )
                try:
                    conn.execute("BEGIN")
                    try:
                        return fn(conn)
                    finally:
                        conn.execute("COMMIT")
                finally:
                    conn.close()

        return await anyio.to_thread.run_sync(run)
