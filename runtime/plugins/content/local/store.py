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

The ingest writer and its follower live in :mod:`.writer`, the file operations
both use in :mod:`.files`.

Blocking IO runs in worker threads. Bytes are written and hashed in batches of
at least :data:`~.files.BATCH_SIZE`, and each batch is written and hashed in two threads
at once (both release the GIL), so the cost per batch is ``max(write, hash)``
plus a few thread hops.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import weakref
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, final

import anyio
from anyio import to_thread

from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from runtime.core.faults import fault_point
from runtime.plugins.content.api import BlobExists, BlobInfo, Status, validate_digest
from runtime.plugins.content.local.files import (
    NO_HARDLINKS,
    READ_CHUNK_SIZE,
    REHASH_CHUNK,
    check_ref,
    format_time,
    from_ns,
    fsync_dir,
    locked,
    os_errors,
    read_file,
    read_int,
    read_time,
    touch_ctime,
    utc_now,
    write_file,
)
from runtime.plugins.content.local.writer import OpenedIngest, Writer

if TYPE_CHECKING:
    from hashlib import _Hash

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
            status = await to_thread.run_sync(self._read_status, self._ingest_dir(ref))
        if status is None:
            raise NotFound(f"ingest {ref}: not found")
        return status

    async def list_statuses(self) -> list[Status]:
        """Return the state of every ingest, sorted by ref."""

        def scan() -> list[Status]:
            found = (self._read_status(entry) for entry in self._ingests.iterdir())
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
            path = self._ingest_dir(ref)
            lock_fd = self._lock(path, ref, create=False)
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
        # Hashed, so any ref string maps to a safe, fixed-length directory name.
        return self._ingests / hashlib.sha256(ref.encode()).hexdigest()

    def _lock(self, path: Path, ref: str, *, create: bool) -> int:
        """Take the ingest's flock without waiting; return the lock file's fd.

        With ``create``, the directory is created if missing; without, a
        missing ingest raises NotFound.
        """
        lock_path = path / "lock"
        for _ in range(16):
            if create:
                path.mkdir(exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                if create:
                    continue  # removed between mkdir and open: make it again
                raise NotFound(f"ingest {ref}: not found") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise locked(ref) from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that released between our open and our flock may have removed the
            # directory (commit, abort): then we hold a lock nobody else can see. Start over.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
            if not create:
                raise NotFound(f"ingest {ref}: not found")
        raise locked(ref)

    def _open(self, ref: str, total: int | None, expected: str | None) -> OpenedIngest:
        path = self._ingest_dir(ref)
        lock_fd = self._lock(path, ref, create=True)
        try:
            return self._load(path, ref, total, expected, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    def _load(
        self, path: Path, ref: str, total: int | None, expected: str | None, lock_fd: int
    ) -> OpenedIngest:
        """Initialise or resume the ingest at ``path``; the caller holds its lock."""
        now = utc_now()
        stored_ref = read_file(path / "ref")
        resume = stored_ref is not None
        stored_total = stored_expected = None
        started_at = updated_at = now
        if resume:
            if stored_ref != ref:
                raise FailedPrecondition(f"ingest {path.name} belongs to ref {stored_ref!r}")
            stored_total = read_int(path / "total")
            if total is not None and stored_total is not None and total != stored_total:
                raise FailedPrecondition(
                    f"ref {ref}: total {total} conflicts with recorded total {stored_total}"
                )
            stored_expected = read_file(path / "expected") or None
            started_at = read_time(path / "startedat") or now
            updated_at = read_time(path / "updatedat") or now
        total = total if total is not None else stored_total
        expected = expected or stored_expected
        if expected is not None and self._blob_path(expected).exists():
            if not resume:
                shutil.rmtree(path, ignore_errors=True)
            raise AlreadyExists(f"content {expected}: already exists")

        if total is not None and total != stored_total:
            write_file(path / "total", str(total))
        if expected is not None and expected != stored_expected:
            write_file(path / "expected", expected)
        if resume:
            fd, offset, hasher, mtime_ns = self._rehash(path / "data")
            updated_at = max(updated_at, from_ns(mtime_ns))
        else:
            # Left by an open that died before writing ``ref``; not ours to keep.
            for name, value in (("total", total), ("expected", expected)):
                if value is None:
                    (path / name).unlink(missing_ok=True)
            write_file(path / "startedat", format_time(now))
            write_file(path / "updatedat", format_time(now))
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            fd, offset, hasher = os.open(path / "data", flags, 0o644), 0, hashlib.sha256()
            # Last: an ingest exists once its ref file does.
            write_file(path / "ref", ref)
        return OpenedIngest(
            path=path,
            ref=ref,
            fd=fd,
            lock_fd=lock_fd,
            offset=offset,
            hasher=hasher,
            total=total,
            expected=expected,
            started_at=started_at,
            updated_at=updated_at,
        )

    def _rehash(self, data: Path) -> tuple[int, int, _Hash, int]:
        """Open an ingest's data for resuming; return fd, size, digest state, mtime."""
        fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            if st.st_nlink > 1:
                # A crash between linking into blobs/ and removing the ingest left ``data`` as
                # a second name of a committed blob: writing would change the blob. Drop the
                # name and start over; committing the same bytes again yields AlreadyExists.
                os.close(fd)
                os.unlink(data)
                fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                st = os.fstat(fd)
            hasher = hashlib.sha256()
            buf = memoryview(bytearray(REHASH_CHUNK))
            offset = 0
            while n := os.preadv(fd, [buf], offset):
                hasher.update(buf[:n])
                offset += n
            return fd, offset, hasher, st.st_mtime_ns
        except BaseException:
            os.close(fd)
            raise

    def _read_status(self, path: Path) -> Status | None:
        """Read an ingest's status from disk; None if it is missing or incomplete."""
        ref = read_file(path / "ref")
        if ref is None:
            return None
        try:
            st = os.stat(path / "data")
        except FileNotFoundError:
            return None
        mtime = from_ns(st.st_mtime_ns)
        started_at = read_time(path / "startedat") or mtime
        # updatedat is written on close only; a killed writer's last write shows in the mtime.
        updated_at = max(read_time(path / "updatedat") or mtime, mtime)
        return Status(
            ref=ref,
            offset=st.st_size,
            total=read_int(path / "total"),
            expected=read_file(path / "expected") or None,
            started_at=started_at,
            updated_at=updated_at,
        )

    def _publish(self, ingest: Path, fd: int, digest: str) -> None:
        """Make a verified ingest's data the blob ``digest``, durably; drop the ingest."""
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
