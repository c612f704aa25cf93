"""The disk phase: remove the backend objects no metadata record refers to any more.

Everything here is computed from the committed records, never from a list
the sweep left behind: a crash anywhere leaves the next collection the same
work to find, and removing something twice is harmless. The order of the
whole collection (records first, bytes after) means a crash can leave bytes
without a record, never a record without bytes.

Backends create their object *before* the record that refers to it (a blob
is linked before its content record is written, a backend snapshot exists
before its snapshot record), so an unreferenced object may be one that a
writer is about to record. These rules keep those:

* Objects created after the collection started are left for the next one
  (blob ctime, snapshot creation time, ingest start time).
* Backend snapshots a prepare, view or commit is making are left alone
  whatever their age (the snapshot service's ``in_flight``): one made just
  before the collection started may be recorded only after the look-up
  below, and the look-up alone would not see it coming. The in-flight check
  comes first: a snapshot leaves that set only once its record is committed.
* Just before an object is removed its references are looked up again. For
  blobs the look-up and a rename out of ``blobs/sha256`` happen under the
  writer lock, so no content record can be written in between; the unlink
  follows outside it. A crash between the two leaves the trash directory,
  which the next collection empties first.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread
import msgspec

from runtime.core.errors import FailedPrecondition, MoorageError, NotFound, Unavailable
from runtime.core.faults import fault_point
from runtime.plugins.content.api import Store as ContentStore
from runtime.plugins.gc.api import GCReport, Source
from runtime.plugins.gc.locking import timed_write
from runtime.plugins.metadata.api import Database
from runtime.plugins.snapshots.api import Snapshotter

__all__ = ["DiskSweeper", "Since", "fs_clock_ns"]

log = logging.getLogger("moorage.gc")

# Linux's CLOCK_REALTIME_COARSE, which the kernel stamps file times with; the
# time module has no name for it.
_CLOCK_REALTIME_COARSE = 5
# Stamped at each collection's start to read the file system's clock.
_CLOCK_PROBE = ".gc-clock"
# Blobs whose references are re-checked and unlinked per writer-lock hold:
# bounds each hold to about a millisecond even when thousands go at once.
BLOB_BATCH = 256
#: Where blobs go between the re-check (under the lock) and the unlink (after it).
TRASH = "gc-trash"


def fs_clock_ns(directory: Path | None = None) -> int:
    """Now, on the clock file ctimes come from (nanoseconds since the epoch).

    With ``directory``, the answer is a ctime the file system itself hands out,
    strictly later than that of every file written there before the call: the
    kernel's coarse clock can lag a file's stamp (6.13's multigrain timestamps
    give fine-grained ctimes), and on a coarse clock a file written in the same
    tick would tie. A probe file is stamped until its ctime moves past the first
    stamp, which takes at most one tick. Without ``directory``, the coarse clock.
    """
    if directory is not None:
        with contextlib.suppress(OSError):
            return _stamp_after(directory / _CLOCK_PROBE)
    try:
        return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)
    except OSError:
        return time.time_ns() - 20_000_000  # a generous tick on other systems


def _stamp_after(probe: Path) -> int:
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a ctime update, and fstat asks for a fine-grained next one
        first = os.fstat(fd).st_ctime_ns
        deadline = time.monotonic() + 0.5
        while True:
            os.fchmod(fd, 0o600)
            now = os.fstat(fd).st_ctime_ns
            if now > first or time.monotonic() > deadline:
                return now
            time.sleep(0.001)
    finally:
        os.close(fd)


class Since(msgspec.Struct, frozen=True):
    """When the collection started, on each clock objects are stamped with.

    Attributes:
        wall: For times backends record themselves (snapshots, ingests).
        fs_ns: For file ctimes (blobs), from :func:`fs_clock_ns`.
    """

    wall: datetime
    fs_ns: int


class DiskSweeper:
    """Removes unreferenced blobs, ingests and backend snapshots.

    Args:
        db: The metadata database: its registered sources say which backend
            objects the records refer to.
        store: The content backend, or None to leave content alone.
        snapshotters: Snapshotter backends by name (as in the records).
        in_flight: Per snapshotter name, whether a backend key is being made
            and not yet recorded; such snapshots are never removed. Without
            one, only the creation-time rule protects them.
    """

    def __init__(
        self,
        db: Database,
        store: ContentStore | None,
        snapshotters: Mapping[str, Snapshotter],
        in_flight: Mapping[str, Callable[[str], bool]] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.snapshotters = dict(snapshotters)
        self.in_flight = dict(in_flight or {})

    async def run(self, since: Since, report: GCReport) -> None:
        """Remove what no record refers to and was there before ``since``; add to ``report``."""
        if self.store is not None:
            await self._blobs(self.store, since, report)
            await self._ingests(self.store, since, report)
        for name, backend in sorted(self.snapshotters.items()):
            try:
                await self._snapshots(name, backend, since, report)
            except (MoorageError, OSError):
                # One broken backend must not keep the others (or content) from being collected.
                log.warning("gc: cleaning snapshotter %s failed", name, exc_info=True)

    async def _referenced(self, backend: str) -> set[str]:
        """The objects of ``backend`` some record refers to, through the sources."""
        sources = self.db.sources
        return await self.db.read(lambda c: _referenced(c, sources, backend))

    async def _refers_to(self, backend: str, key: str) -> bool:
        sources = self.db.sources
        return await self.db.read(lambda c: _refers_to(c, sources, backend, key))

    # -- content ---------------------------------------------------------------

    async def _blobs(self, store: ContentStore, since: Since, report: GCReport) -> None:
        directory = store.root / "blobs" / "sha256"  # the layout store.py documents
        # Beside the blobs, so moving one there is a rename on the same filesystem.
        trash = store.root / "blobs" / TRASH
        await anyio.to_thread.run_sync(_empty_trash, trash)  # left by a crash
        on_disk = await anyio.to_thread.run_sync(_scan_blobs, directory)
        referenced = await self._referenced("content")
        doomed = [
            hex_
            for hex_, ctime in on_disk
            if f"sha256:{hex_}" not in referenced and ctime < since.fs_ns
        ]
        figures = report.kind("content")
        for start in range(0, len(doomed), BLOB_BATCH):
            batch = doomed[start : start + BLOB_BATCH]
            removed, held = await timed_write(
                self.db,
                functools.partial(
                    _move_unreferenced,
                    sources=self.db.sources,
                    directory=directory,
                    trash=trash,
                    hexes=batch,
                    since=since,
                ),
            )
            report.lock_seconds += held
            figures.disk += len(removed)
            figures.bytes += sum(removed)
            # Crash tests: blobs moved out of the store, not yet unlinked.
            fault_point("gc.disk.after-trash")
            await anyio.to_thread.run_sync(_empty_trash, trash)

    async def _ingests(self, store: ContentStore, since: Since, report: GCReport) -> None:
        statuses = await store.list_statuses()
        rows = await self._referenced("ingests")
        figures = report.kind("ingests")
        for status in statuses:
            if status.ref in rows or _aware(status.started_at) >= since.wall:
                continue
            if await self._refers_to("ingests", status.ref):
                continue  # registered since we listed
            try:
                # Refused while a writer holds the ref: a resumed upload is left alone.
                await store.abort(status.ref)
            except (NotFound, Unavailable):
                continue
            figures.disk += 1
            figures.bytes += status.offset

    # -- snapshots ---------------------------------------------------------------

    async def _snapshots(
        self, name: str, backend: Snapshotter, since: Since, report: GCReport
    ) -> None:
        figures = report.kind(f"snapshots/{name}")
        in_flight = self.in_flight.get(name, _nothing_in_flight)
        kind = f"snapshots/{name}"
        referenced = await self._referenced(kind)
        # Leaves first: a parent goes in a later round, once its children are gone.
        while True:
            infos = await backend.walk()
            parents = {info.parent for info in infos if info.parent}
            leaves = [
                info
                for info in infos
                if info.name not in referenced
                and info.name not in parents
                and _aware(info.created_at) < since.wall
            ]
            progressed = False
            for info in leaves:
                # Before the records, see the module docstring.
                if in_flight(info.name):
                    continue
                if await self._refers_to(kind, info.name):
                    referenced.add(info.name)  # recorded since we listed
                    continue
                size = 0
                with contextlib.suppress(MoorageError):
                    size = (await backend.usage(info.name)).size
                try:
                    await backend.remove(info.name)
                except (NotFound, FailedPrecondition):
                    continue  # gone already, or a child appeared meanwhile
                progressed = True
                figures.disk += 1
                figures.bytes += size
            if not progressed:
                break
        await backend.cleanup()


def _nothing_in_flight(backend_key: str) -> bool:
    return False


def _aware(when: datetime) -> datetime:
    """A backend's time as UTC-aware (a third-party backend may hand a naive one)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _scan_blobs(directory: Path) -> list[tuple[str, int]]:
    """``(hex, ctime_ns)`` of every blob file; other names are not blobs and stay."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if len(name) != 64 or name.strip("0123456789abcdef"):
            continue
        try:
            found.append((name, entry.stat(follow_symlinks=False).st_ctime_ns))
        except FileNotFoundError:
            continue
    return found


def _referenced(conn: sqlite3.Connection, sources: Sequence[Source], backend: str) -> set[str]:
    """The objects of ``backend`` any source's records refer to."""
    found: set[str] = set()
    for source in sources:
        found |= source.backend_refs(conn, backend)
    return found


def _refers_to(conn: sqlite3.Connection, sources: Sequence[Source], backend: str, key: str) -> bool:
    return any(source.refers_to(conn, backend, key) for source in sources)


def _move_unreferenced(
    conn: sqlite3.Connection,
    sources: Sequence[Source],
    directory: Path,
    trash: Path,
    hexes: list[str],
    since: Since,
) -> list[int]:
    """Move the blobs still unreferenced to ``trash``; return their sizes.

    Runs under the writer lock, so no content record can appear between the
    check and the move. A rename, not an unlink: freeing a file's blocks can
    take milliseconds on a busy journal, a rename tens of microseconds, and
    writers wait for every one of them.
    """
    trash.mkdir(exist_ok=True)
    removed = []
    for hex_ in hexes:
        digest = f"sha256:{hex_}"
        if _refers_to(conn, sources, "content", digest):
            continue
        path = directory / hex_
        try:
            st = os.stat(path)
            if st.st_ctime_ns >= since.fs_ns:
                continue  # deleted and committed again since the collection started
            os.rename(path, trash / hex_)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("gc: cannot remove blob %s: %s", digest, exc.strerror)
            continue
        removed.append(st.st_size)
    return removed


def _empty_trash(trash: Path) -> None:
    """Unlink what the trash holds: unreferenced blobs, already out of the store's sight."""
    try:
        entries = list(os.scandir(trash))
    except FileNotFoundError:
        return
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
