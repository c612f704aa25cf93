"""The local content store: blobs and resumable ingests in plain files under one root.

Disk layout::

    <root>/blobs/sha256/<hex>          committed blob, mode 0444
    <root>/ingest/<sha256(ref)>/       one upload in progress
        ref  total  expected  startedat  updatedat  data  lock

Why it survives ``SIGKILL``:

* Bytes only reach ``blobs/`` by a hard link (or rename) of a fully written,
  fsynced, verified ``data`` file, so a partial blob is never visible.
* An ingest counts only once its ``ref`` file exists, and that file is
  written last, by rename. A directory without one is re-initialised.
* The digest state is not persisted: a resumed ingest re-hashes ``data`` and
  takes its size as the offset. A write cut short may leave extra bytes past
  the last acknowledged offset, which is fine, since those bytes are hashed.
* One writer per ref: ``flock`` on ``lock`` (non-blocking) across processes, plus
  a dict of open writers in this process so that a second open fails before any IO.

The ingest writer and its follower live in :mod:`.writer`, one ingest's
directory (lock, state files, resume) in :mod:`.ingest_dirs`, the file
operations they all use in :mod:`.files`.

Blocking IO runs in worker threads. Bytes are written and hashed in batches of
at least :data:`~.files.BATCH_SIZE`, and each batch is written and hashed in two threads
at once (both release the GIL), so the cost per batch is ``max(write, hash)``
plus a few thread hops.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO, final

import anyio
from anyio import to_thread

from runtime.core.errors import InvalidArgument, NotFound, OutOfRange
from runtime.core.faults import fault_point
from runtime.plugins.content.api import BlobExists, BlobInfo, Status, validate_digest
from runtime.plugins.content.local import ingest_dirs
from runtime.plugins.content.local.files import (
    NO_HARDLINKS,
    READ_CHUNK_SIZE,
    check_ref,
    from_ns,
    fsync_dir,
    locked,
    os_errors,
    touch_ctime,
)
from runtime.plugins.content.local.writer import OpenedIngest, Writer

__all__ = [
    "ContentStore",
]

@final
class ContentStore:
    """Content-addressed blobs and resumable ingests under ``root``; no namespaces.

    Args:
        root: The store's directory; ``blobs/sha256`` and ``ingest`` are
            created under it if missing.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._blobs = self._root / "blobs" / "sha256"
        self._ingests = self._root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingests.mkdir(parents=True, exist_ok=True)
        # Refs with an open writer in this process, and refs being opened. Weak, so that a
        # writer its caller dropped does not keep the ref locked (see Writer's finalizer).
        self._writers: weakref.WeakValueDictionary[str, Writer] = weakref.WeakValueDictionary()
        self._opening: set[str] = set()

    @property
    def root(self) -> Path:
        """The store's root directory."""
        return self._root

    # -- ingests -----------------------------------------------------------------------------

    async def open_writer(
        self, ref: str, *, total: int | None = None, expected: str | None = None
    ) -> Writer:
        """Open the ingest ``ref``, resuming it if it exists.

        A resumed ingest keeps its data: the offset is the data file's size and
        the digest state is rebuilt by re-hashing it.

        Args:
            ref: The client's key for this upload (pull uses ``layer-<digest>``).
            total: The announced size; must match a total recorded earlier.
            expected: The announced digest; stored for commit to check.

        Returns:
            The writer, holding the ref's lock.

        Raises:
            Unavailable: Another writer (in any process) holds ``ref``.
            AlreadyExists: ``expected`` is already a committed blob.
            FailedPrecondition: ``total`` conflicts with the recorded total.
            InvalidArgument: Empty ref, negative total or malformed digest.
        """
        check_ref(ref)
        if total is not None and total < 0:
            raise InvalidArgument(f"invalid total {total} for ref {ref}")
        if expected is not None:
            validate_digest(expected)
        if ref in self._opening or ref in self._writers:
            raise locked(ref)
        # Reserved before the first await, so a concurrent open here fails without IO.
        self._opening.add(ref)
        try:
            with os_errors(f"open ingest {ref}"):
                opened = await to_thread.run_sync(self._open, ref, total, expected)
        finally:
            self._opening.discard(ref)
        writer = Writer(self, opened)
        self._writers[ref] = writer
        try:
            # The worker thread is never abandoned, so a cancellation that arrived while it
            # ran shows only now. Hand no writer to a caller that is gone.
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await writer.close()
            raise
        return writer

    async def status(self, ref: str) -> Status:
        """Return the state of the ingest ``ref``.

        Raises:
            NotFound: No such ingest.
        """
        check_ref(ref)
        writer = self._writers.get(ref)
        if writer is not None:
            return writer.status()
        with os_errors(f"status of ingest {ref}"):
            status = await to_thread.run_sync(ingest_dirs.read_status, self._ingest_dir(ref))
        if status is None:
            raise NotFound(f"ingest {ref}: not found")
        return status

    async def list_statuses(self) -> list[Status]:
        """Return the state of every ingest, sorted by ref."""

        def scan() -> list[Status]:
            found = (ingest_dirs.read_status(entry) for entry in self._ingests.iterdir())
            return [s for s in found if s is not None]

        with os_errors("list ingests"):
            statuses = await to_thread.run_sync(scan)
        live = [w.status() if (w := self._writers.get(s.ref)) else s for s in statuses]
        return sorted(live, key=lambda s: s.ref)

    async def abort(self, ref: str) -> None:
        """Delete the ingest ``ref``.

        Raises:
            NotFound: No such ingest.
            Unavailable: A writer holds it.
        """
        check_ref(ref)
        if ref in self._opening or ref in self._writers:
            raise locked(ref)

        def work() -> None:
            import shutil

            path = self._ingest_dir(ref)
            lock_fd = ingest_dirs.lock(path, ref, create=False)
            try:
                shutil.rmtree(path)
            finally:
                os.close(lock_fd)

        with os_errors(f"abort ingest {ref}"):
            await to_thread.run_sync(work)

    # -- blobs -------------------------------------------------------------------------------

    async def info(self, digest: str) -> BlobInfo:
        """Return size and creation time of a committed blob.

        Raises:
            NotFound: No such blob.
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with os_errors(f"stat {digest}", missing=f"content {digest}: not found"):
            st = await to_thread.run_sync(os.stat, path)
        return BlobInfo(digest=digest, size=st.st_size, created_at=from_ns(st.st_mtime_ns))

    async def exists(self, digest: str) -> bool:
        """Return whether ``digest`` is committed.

        Raises:
            InvalidArgument: Malformed digest.
        """
        return await to_thread.run_sync(os.path.exists, self._blob_path(digest))

    async def delete(self, digest: str) -> None:
        """Remove a committed blob; readers that have it open keep reading.

        Raises:
            NotFound: No such blob.
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with os_errors(f"delete {digest}", missing=f"content {digest}: not found"):
            await to_thread.run_sync(os.unlink, path)

    def blob_size(self, digest: str) -> int | None:
        """Return a committed blob's size, or None if there is none; blocking (one ``stat``).

        Raises:
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with os_errors(f"stat {digest}"):
            try:
                return os.stat(path).st_size
            except FileNotFoundError:
                return None

    def remove_blob(self, digest: str) -> bool:
        """Unlink a committed blob, blocking; return whether it was there.

        For callers already in a worker thread, such as a metadata transaction
        that checks no namespace refers to the blob before removing it.

        Raises:
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with os_errors(f"delete {digest}"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
        return True

    async def walk(self) -> list[BlobInfo]:
        """Return every committed blob, sorted by digest."""

        def scan() -> list[BlobInfo]:
            infos = []
            for entry in os.scandir(self._blobs):
                digest = f"sha256:{entry.name}"
                try:
                    validate_digest(digest)
                    st = entry.stat()
                except (InvalidArgument, FileNotFoundError):
                    continue  # a stray file, or deleted while we looked
                infos.append(
                    BlobInfo(digest=digest, size=st.st_size, created_at=from_ns(st.st_mtime_ns))
                )
            return sorted(infos, key=lambda i: i.digest)

        with os_errors("walk blobs"):
            return await to_thread.run_sync(scan)

    def open_reader(self, digest: str) -> BinaryIO:
        """Open a committed blob for reading; the caller closes the file.

        This blocks on one ``open``; use :meth:`read` from async code that streams.

        Raises:
            NotFound: No such blob.
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with os_errors(f"open {digest}", missing=f"content {digest}: not found"):
            return open(path, "rb")  # the caller owns (and closes) the file

    async def read(
        self, digest: str, offset: int = 0, size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield ``size`` bytes of a blob from ``offset`` in chunks of :data:`READ_CHUNK_SIZE`.

        A range running past the end is cut at the end. As with any async
        generator, errors surface on the first iteration.

        Args:
            digest: The blob.
            offset: First byte; may equal the size (nothing is yielded).
            size: How many bytes; ``None`` reads to the end.

        Raises:
            OutOfRange: ``offset`` < 0 or past the end, or ``size`` < 0.
            NotFound: No such blob.
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        if offset < 0 or (size is not None and size < 0):
            raise OutOfRange(f"invalid range offset={offset} size={size} for {digest}")
        with os_errors(f"open {digest}", missing=f"content {digest}: not found"):
            fd = await to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            length = os.fstat(fd).st_size
            if offset > length:
                raise OutOfRange(f"offset {offset} is past the end of {digest} ({length} bytes)")
            end = length if size is None else min(length, offset + size)
            while offset < end:
                with os_errors(f"read {digest}"):
                    chunk = await to_thread.run_sync(
                        os.pread, fd, min(READ_CHUNK_SIZE, end - offset), offset
                    )
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    # -- disk helpers (run in worker threads) -------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / validate_digest(digest)

    def _ingest_dir(self, ref: str) -> Path:
        return ingest_dirs.directory(self._ingests, ref)

    def _open(self, ref: str, total: int | None, expected: str | None) -> OpenedIngest:
        path = self._ingest_dir(ref)
        lock_fd = ingest_dirs.lock(path, ref, create=True)
        try:
            return ingest_dirs.load(path, ref, total, expected, lock_fd, self._blobs)
        except BaseException:
            os.close(lock_fd)
            raise

    def _publish(self, ingest: Path, fd: int, digest: str) -> None:
        """Make a verified ingest's data the blob ``digest``, durably; drop the ingest."""
        import shutil

        os.fsync(fd)
        os.fchmod(fd, 0o444)
        data, target = ingest / "data", self._blobs / validate_digest(digest)
        # Crash tests: verified and durable, not yet a blob (the ingest must resume).
        fault_point("content.commit.before-link")
        try:
            # link, unlike rename, refuses to replace: an existing blob stays untouched.
            os.link(data, target)
        except FileExistsError:
            touch_ctime(target)
            shutil.rmtree(ingest, ignore_errors=True)
            raise BlobExists(digest) from None
        except OSError as exc:
            if exc.errno not in NO_HARDLINKS:
                os.fchmod(fd, 0o644)
                raise
            # No hard links on this filesystem: check then rename. Two racing commits of
            # the same digest may both succeed; the bytes are the same either way.
            if target.exists():
                touch_ctime(target)
                shutil.rmtree(ingest, ignore_errors=True)
                raise BlobExists(digest) from None
            os.rename(data, target)
        fsync_dir(self._blobs)
        # Crash tests: a blob, and its ingest still there as a second name of it.
        fault_point("content.commit.after-link")
        shutil.rmtree(ingest)
