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

A :class:`Follower` (:meth:`Writer.follow`) reads an ingest's bytes while they
are written, from another thread, and sees its end only once the writer has
verified and published the blob; a pull applies a layer that way while it downloads.

Blocking IO runs in worker threads. Bytes are written and hashed in batches of
at least :data:`BATCH_SIZE`, and each batch is written and hashed in two threads
at once (both release the GIL), so the cost per batch is ``max(write, hash)``
plus a few thread hops.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import shutil
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast, final

import anyio
from anyio import to_thread

from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from runtime.core.faults import fault_point
from runtime.plugins.content.api import BlobExists, BlobInfo, Status, validate_digest

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "BATCH_SIZE",
    "READ_CHUNK_SIZE",
    "WRITEBACK_WINDOW",
    "ContentStore",
    "Follower",
    "Writer",
]

#: Writes are gathered until this many bytes are pending, then written and
#: hashed in one go; larger writes go straight through without a copy.
BATCH_SIZE = 1 << 20
#: Size of the chunks :meth:`ContentStore.read` yields.
READ_CHUNK_SIZE = 1 << 20
#: Every this many bytes, writeback of the data written so far is started, so that
#: the disk works while we receive and commit's fsync finds little left to do.
WRITEBACK_WINDOW = 8 << 20
# Re-hashing a resumed ingest reads in bigger pieces: it is one thread call anyway.
_REHASH_CHUNK = 4 << 20
# link() errors that mean "this filesystem has no hard links", not "you may not".
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}
_SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>; not exposed by the os module


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Return libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", fn)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk, without waiting for it.

    Only a hint: durability still comes from the fsync at commit, so errors are ignored.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _leaked(ref: str, fd: int, lock_fd: int) -> None:
    """Finalizer of a Writer collected while open: close its files, releasing the flock."""
    for each in (fd, lock_fd):
        with contextlib.suppress(OSError):
            os.close(each)
    warnings.warn(f"writer for ref {ref} was not closed", ResourceWarning, stacklevel=1)


def _locked(ref: str) -> Unavailable:
    return Unavailable(f"ref {ref} locked: another writer is open, retry later")


def _translate(exc: OSError, what: str) -> MoorageError:
    """Map an OSError to the domain error closest to it."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{what}: {reason}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: {reason}")
    return MoorageError(f"{what}: {reason}")


@contextlib.contextmanager
def _os_errors(what: str, *, missing: str | None = None) -> Iterator[None]:
    """Translate OSErrors escaping the block; our own errors pass through.

    With ``missing``, a FileNotFoundError becomes ``NotFound(missing)``.
    """
    try:
        yield
    except MoorageError:
        # PermissionDenied is also an OSError: do not wrap it twice.
        raise
    except FileNotFoundError as exc:
        if missing is None:
            raise _translate(exc, what) from exc
        raise NotFound(missing) from None
    except OSError as exc:
        raise _translate(exc, what) from exc


def _check_ref(ref: str) -> None:
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument(f"invalid ref {ref!r}: want a non-empty string")


def _now() -> datetime:
    return datetime.now(UTC)


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _write_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so a crash leaves the old or the new text, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _read_time(path: Path) -> datetime | None:
    text = _read_file(path)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_file(path)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _format_time(when: datetime) -> str:
    # RFC 3339 with a "Z", as containerd writes its timestamp files.
    return when.isoformat().replace("+00:00", "Z")


def _pwrite_all(fd: int, buf: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _touch_ctime(blob: Path) -> None:
    """Mark a blob as just committed again (its ctime), as a new link would be.

    Garbage collection leaves blobs changed after it started for the next run: a
    commit deduplicated onto an old, unreferenced blob is about to record it.
    Same mode, so only the ctime changes.
    """
    with contextlib.suppress(FileNotFoundError):
        os.chmod(blob, 0o444)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Tail:
    """How far an ingest is readable by its followers, and how it ended; shared by threads."""

    def __init__(self, readable: int) -> None:
        self.cond = threading.Condition()
        #: Bytes of ``data`` written and flushed: what a follower may read.
        self.readable = readable
        #: The writer committed the blob (its bytes verified): past ``readable`` is the end.
        self.done = False
        #: Why the ingest ended without a blob; followers raise it.
        self.error: MoorageError | None = None

    def advance(self, readable: int) -> None:
        with self.cond:
            self.readable = readable
            self.cond.notify_all()

    def end(self, error: MoorageError | None) -> None:
        """Mark the end: committed (``error`` None) or failed; only the first call counts."""
        with self.cond:
            if self.done or self.error is not None:
                return
            if error is None:
                self.done = True
            else:
                self.error = error
            self.cond.notify_all()


@final
class Follower:
    """Reads an ingest from its start while its writer is still writing it.

    Made by :meth:`Writer.follow`; meant for one consumer thread (a decompressor),
    which may block in :meth:`read`. ``read`` returns bytes as soon as the writer
    has flushed them, and ``b""`` only once the writer has committed them as a
    verified blob and everything was read. So a consumer that reaches the end has
    read exactly the bytes of the expected digest; anything it made of them before
    that is unverified and must be discarded if ``read`` raises.

    Raises (from :meth:`read`):
        FailedPrecondition: The ingest's size or digest did not verify at commit.
        Unavailable: The writer was closed, aborted or restarted from offset 0
            before a commit, or :meth:`interrupt` was called.
    """

    def __init__(self, fd: int, tail: _Tail, ref: str) -> None:
        self._fd = fd
        self._tail = tail
        self._ref = ref
        self._position = 0
        self._interrupted = False

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def readable(self) -> bool:
        """Always: a file object's answer, for consumers that ask."""
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that are left if negative), waiting for the writer."""
        if size < 0:
            parts = []
            while chunk := self.read(READ_CHUNK_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        if size == 0:
            return b""
        tail = self._tail
        with tail.cond:
            while True:
                if self._interrupted:
                    raise Unavailable(f"reading ingest {self._ref} was interrupted")
                available = tail.readable - self._position
                if available > 0:
                    break
                if tail.error is not None:
                    raise type(tail.error)(tail.error.message)
                if tail.done:
                    return b""
                tail.cond.wait()
        if self._fd < 0:
            raise Unavailable(f"reading ingest {self._ref}: the follower is closed")
        # Outside the lock: the writer only appends past `readable`, never rewrites below it.
        with _os_errors(f"read ingest {self._ref}"):
            data = os.pread(self._fd, min(size, available), self._position)
        if not data:
            raise Unavailable(f"ingest {self._ref} is shorter than its writer wrote")
        self._position += len(data)
        return data

    def interrupt(self) -> None:
        """Make a blocked (and every later) :meth:`read` raise; callable from any thread."""
        with self._tail.cond:
            self._interrupted = True
            self._tail.cond.notify_all()

    def close(self) -> None:
        """Release the file descriptor; idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


@dataclass(slots=True)
class _Opened:
    """What opening an ingest found on disk, handed from the worker thread to the Writer."""

    path: Path
    ref: str
    fd: int
    lock_fd: int
    offset: int
    hasher: _Hash
    total: int | None
    expected: str | None
    started_at: datetime
    updated_at: datetime


@final
class Writer:
    """An open ingest. Holds the ref's lock until :meth:`commit`, :meth:`close` or :meth:`abort`.

    Obtained from :meth:`ContentStore.open_writer`; usable as an async context
    manager that closes it (keeping the ingest) unless it was committed.
    """

    def __init__(self, store: ContentStore, opened: _Opened) -> None:
        self._store = store
        self._ref = opened.ref
        self._path = opened.path
        self._fd = opened.fd
        self._lock_fd = opened.lock_fd
        self._hasher = opened.hasher
        self._flushed = opened.offset
        self._total = opened.total
        self._expected = opened.expected
        self._started_at = opened.started_at
        self._updated_at = opened.updated_at
        self._pending = bytearray()
        # Bytes before this offset have been handed to the kernel's writeback already.
        self._written_back = opened.offset
        self._closed = False
        # Serialises this writer's operations: offsets and the hash assume one at a time.
        self._lock = anyio.Lock()
        # Created by the first follow(): followers see flushes and the ingest's end.
        self._tail: _Tail | None = None
        # A writer dropped without close would hold its ref until the daemon restarts
        # (pull reuses refs): release the files when it is collected, and say so.
        self._finalizer = weakref.finalize(self, _leaked, self._ref, self._fd, self._lock_fd)

    async def __aenter__(self) -> Writer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ref(self) -> str:
        """The ref this writer holds."""
        return self._ref

    def status(self) -> Status:
        """Return the live state of the ingest; the offset counts bytes not yet flushed."""
        return Status(
            ref=self._ref,
            offset=self._flushed + len(self._pending),
            total=self._total,
            expected=self._expected,
            started_at=self._started_at,
            updated_at=self._updated_at,
        )

    async def write(self, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        """Append ``data`` to the ingest.

        Args:
            data: The next bytes. They may sit in memory until
                :data:`BATCH_SIZE` bytes are pending; a crash loses them, and
                the resumed offset shows it.
            offset: Where ``data`` starts. ``None`` or the current offset
                appends, and ``0`` over existing data truncates the ingest and
                starts again.

        Raises:
            OutOfRange: ``offset`` is neither the current offset nor 0.
            FailedPrecondition: The writer is closed.
            ResourceExhausted: The disk is full. The failed batch is dropped
                (file and hash roll back to the last flush): resume from
                :meth:`status`'s offset.
        """
        view = memoryview(data).cast("B")
        current = self._flushed + len(self._pending)
        if (
            not self._lock.locked()
            and not self._closed
            and (offset is None or offset == current)
            and len(self._pending) + len(view) < BATCH_SIZE
        ):
            # Fast path for small writes: no lock, no await. Taking an anyio.Lock is a
            # checkpoint, which costs more than appending 64 KiB to the batch.
            self._pending += view
            self._updated_at = _now()
            return
        async with self._lock:
            self._check_open()
            current = self._flushed + len(self._pending)
            if offset is not None and offset != current:
                if offset != 0:
                    raise OutOfRange(
                        f"ref {self._ref}: write at offset {offset}, current offset is {current}"
                    )
                await self._truncate()
            self._updated_at = _now()
            if not self._pending and len(view) >= BATCH_SIZE:
                # Big writes skip the copy into the batch buffer.
                await self._flush(view)
                return
            self._pending += view
            if len(self._pending) >= BATCH_SIZE:
                await self._flush_pending()

    def follow(self) -> Follower | None:
        """A reader of this ingest from offset 0 that follows the writes as they are flushed.

        Its end comes only after :meth:`commit` verified and published the blob;
        if the ingest ends otherwise, it raises (see :class:`Follower`). The
        caller closes it. Bytes written but still batched become readable at the
        next flush (every :data:`BATCH_SIZE` bytes, and at commit).

        Returns:
            ``None`` when the writer is closed already (committed or not): there
            is nothing left to follow; read the blob, if there is one.
        """
        if self._closed:
            return None
        if self._tail is None:
            self._tail = _Tail(self._flushed)
        return Follower(os.dup(self._fd), self._tail, self._ref)

    def _end_tail(self, error: MoorageError | None) -> None:
        if self._tail is not None:
            self._tail.end(error)

    async def commit(self, size: int | None = None, expected: str | None = None) -> str:
        """Verify the ingest and publish it as a blob; the writer is closed afterwards.

        The data is fsynced, then hard-linked into ``blobs/`` (the only way in),
        and the ingest directory is removed. Whatever the outcome, the lock is
        released, as in containerd; after a failure the ingest is still there
        for :meth:`ContentStore.abort` or a resuming writer.

        Args:
            size: Required size; defaults to the ``total`` given at open, if any.
            expected: Required digest; defaults to the ``expected`` given at open.

        Returns:
            The blob's digest.

        Raises:
            FailedPrecondition: Size or digest differs (nothing is committed),
                or the writer is already closed.
            AlreadyExists: A blob with this digest was already committed; it
                is left as it was and this ingest is dropped.
            InvalidArgument: ``expected`` is not a valid digest, ``size`` < 0.
        """
        if expected is not None:
            validate_digest(expected)
        if size is not None and size < 0:
            raise InvalidArgument(f"invalid commit size {size}")
        async with self._lock:
            self._check_open()
            try:
                await self._flush_pending()
                actual = f"sha256:{self._hasher.hexdigest()}"
                want_size = size if size is not None else self._total
                want_digest = expected if expected is not None else self._expected
                # Checked before the fsync: no point making wrong bytes durable.
                if want_size is not None and want_size != self._flushed:
                    raise FailedPrecondition(
                        f"unexpected commit size {self._flushed}, expected {want_size}"
                    )
                if want_digest is not None and want_digest != actual:
                    raise FailedPrecondition(
                        f"unexpected commit digest {actual}, expected {want_digest}"
                    )
                # Shielded: a cancelled client must not leave a half-published ingest.
                with anyio.CancelScope(shield=True), _os_errors(f"commit {self._ref}"):
                    await to_thread.run_sync(self._store._publish, self._path, self._fd, actual)
                self._end_tail(None)
                return actual
            except BlobExists:
                self._end_tail(None)  # verified above; the same bytes are stored already
                raise
            except FailedPrecondition as exc:
                self._end_tail(FailedPrecondition(exc.message))
                raise
            finally:
                await self._shutdown(remove=False)

    async def close(self) -> None:
        """Flush, release the ref's lock and keep the ingest for a later resume.

        Idempotent; a no-op after :meth:`commit` or :meth:`abort`. Runs to
        the end even in a cancelled scope, since it is what cleanup calls.
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._closed:
                    return
                try:
                    await self._flush_pending()
                finally:
                    await self._shutdown(remove=False)

    async def abort(self) -> None:
        """Delete the ingest and release the ref's lock.

        On a writer that is already closed (say after a failed commit), this
        aborts the ref through the store, and a ref that is gone is fine.
        Like :meth:`close`, it runs to the end in a cancelled scope.
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if not self._closed:
                    self._pending.clear()
                    await self._shutdown(remove=True)
                    return
            with contextlib.suppress(NotFound):
                await self._store.abort(self._ref)

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")

    async def _truncate(self) -> None:
        # Followers have read bytes that are about to be replaced: they cannot go on.
        self._end_tail(Unavailable(f"ingest {self._ref} was restarted from offset 0"))
        self._tail = None
        with _os_errors(f"truncate ingest {self._ref}"):
            await to_thread.run_sync(os.ftruncate, self._fd, 0)
        self._pending.clear()
        self._flushed = self._written_back = 0
        self._hasher = hashlib.sha256()

    async def _flush_pending(self) -> None:
        if self._pending:
            # Hand the buffer over whole: the threads read it while we build the next one.
            buf, self._pending = self._pending, bytearray()
            await self._flush(buf)

    async def _flush(self, buf: bytes | bytearray | memoryview) -> None:
        start = self._flushed
        before = self._hasher.copy()
        failures: list[OSError] = []

        def write() -> None:
            try:
                _pwrite_all(self._fd, buf, start)
                end = start + len(buf)
                if end - self._written_back >= WRITEBACK_WINDOW:
                    _start_writeback(self._fd, self._written_back, end - self._written_back)
                    self._written_back = end
            except OSError as exc:
                failures.append(exc)
                # Undo a partial write so the file stays in step with the hash we restore.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)

        # Shielded: once bytes may be on disk, offset and hash must follow them,
        # so a cancellation waits for this (bounded) batch instead of tearing state.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                tg.start_soon(to_thread.run_sync, self._hasher.update, buf)
                await to_thread.run_sync(write)
        if failures:
            self._hasher = before
            raise _translate(failures[0], f"write to ingest {self._ref}") from failures[0]
        self._flushed = start + len(buf)
        if self._tail is not None:
            self._tail.advance(self._flushed)

    async def _shutdown(self, *, remove: bool) -> None:
        """Close the files and release the lock; remove the ingest or record updatedat."""
        self._closed = True
        # After a successful commit the tail has ended already, and this changes nothing.
        self._end_tail(Unavailable(f"ingest {self._ref} was closed before its commit"))
        self._finalizer.detach()
        fd, lock_fd = self._fd, self._lock_fd
        self._fd = self._lock_fd = -1
        path, updated_at = self._path, self._updated_at

        def work() -> None:
            try:
                os.close(fd)
                if remove:
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    _write_file(path / "updatedat", _format_time(updated_at))
            finally:
                # Last: nobody else may take the ref before we are done with its directory.
                os.close(lock_fd)

        try:
            with anyio.CancelScope(shield=True), _os_errors(f"close ingest {self._ref}"):
                await to_thread.run_sync(work)
        finally:
            self._store._writers.pop(self._ref, None)


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
        _check_ref(ref)
        if total is not None and total < 0:
            raise InvalidArgument(f"invalid total {total} for ref {ref}")
        if expected is not None:
            validate_digest(expected)
        if ref in self._opening or ref in self._writers:
            raise _locked(ref)
        # Reserved before the first await, so a concurrent open here fails without IO.
        self._opening.add(ref)
        try:
            with _os_errors(f"open ingest {ref}"):
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
        _check_ref(ref)
        writer = self._writers.get(ref)
        if writer is not None:
            return writer.status()
        with _os_errors(f"status of ingest {ref}"):
            status = await to_thread.run_sync(self._read_status, self._ingest_dir(ref))
        if status is None:
            raise NotFound(f"ingest {ref}: not found")
        return status

    async def list_statuses(self) -> list[Status]:
        """Return the state of every ingest, sorted by ref."""

        def scan() -> list[Status]:
            found = (self._read_status(entry) for entry in self._ingests.iterdir())
            return [s for s in found if s is not None]

        with _os_errors("list ingests"):
            statuses = await to_thread.run_sync(scan)
        live = [w.status() if (w := self._writers.get(s.ref)) else s for s in statuses]
        return sorted(live, key=lambda s: s.ref)

    async def abort(self, ref: str) -> None:
        """Delete the ingest ``ref``.

        Raises:
            NotFound: No such ingest.
            Unavailable: A writer holds it.
        """
        _check_ref(ref)
        if ref in self._opening or ref in self._writers:
            raise _locked(ref)

        def work() -> None:
            path = self._ingest_dir(ref)
            lock_fd = self._lock(path, ref, create=False)
            try:
                shutil.rmtree(path)
            finally:
                os.close(lock_fd)

        with _os_errors(f"abort ingest {ref}"):
            await to_thread.run_sync(work)

    # -- blobs -------------------------------------------------------------------------------

    async def info(self, digest: str) -> BlobInfo:
        """Return size and creation time of a committed blob.

        Raises:
            NotFound: No such blob.
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with _os_errors(f"stat {digest}", missing=f"content {digest}: not found"):
            st = await to_thread.run_sync(os.stat, path)
        return BlobInfo(digest=digest, size=st.st_size, created_at=_from_ns(st.st_mtime_ns))

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
        with _os_errors(f"delete {digest}", missing=f"content {digest}: not found"):
            await to_thread.run_sync(os.unlink, path)

    def blob_size(self, digest: str) -> int | None:
        """Return a committed blob's size, or None if there is none; blocking (one ``stat``).

        Raises:
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with _os_errors(f"stat {digest}"):
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
        with _os_errors(f"delete {digest}"):
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
                    BlobInfo(digest=digest, size=st.st_size, created_at=_from_ns(st.st_mtime_ns))
                )
            return sorted(infos, key=lambda i: i.digest)

        with _os_errors("walk blobs"):
            return await to_thread.run_sync(scan)

    def open_reader(self, digest: str) -> BinaryIO:
        """Open a committed blob for reading; the caller closes the file.

        This blocks on one ``open``; use :meth:`read` from async code that streams.

        Raises:
            NotFound: No such blob.
            InvalidArgument: Malformed digest.
        """
        path = self._blob_path(digest)
        with _os_errors(f"open {digest}", missing=f"content {digest}: not found"):
            return open(path, "rb")  # the caller owns (and closes) the file

    async def read(
        self, digest: str, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
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
        with _os_errors(f"open {digest}", missing=f"content {digest}: not found"):
            fd = await to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            length = os.fstat(fd).st_size
            if offset > length:
                raise OutOfRange(f"offset {offset} is past the end of {digest} ({length} bytes)")
            end = length if size is None else min(length, offset + size)
            while offset < end:
                with _os_errors(f"read {digest}"):
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
                raise _locked(ref) from None
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
        raise _locked(ref)

    def _open(self, ref: str, total: int | None, expected: str | None) -> _Opened:
        path = self._ingest_dir(ref)
        lock_fd = self._lock(path, ref, create=True)
        try:
            return self._load(path, ref, total, expected, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    def _load(
        self, path: Path, ref: str, total: int | None, expected: str | None, lock_fd: int
    ) -> _Opened:
        """Initialise or resume the ingest at ``path``; the caller holds its lock."""
        now = _now()
        stored_ref = _read_file(path / "ref")
        resume = stored_ref is not None
        stored_total = stored_expected = None
        started_at = updated_at = now
        if resume:
            if stored_ref != ref:
                raise FailedPrecondition(f"ingest {path.name} belongs to ref {stored_ref!r}")
            stored_total = _read_int(path / "total")
            if total is not None and stored_total is not None and total != stored_total:
                raise FailedPrecondition(
                    f"ref {ref}: total {total} conflicts with recorded total {stored_total}"
                )
            stored_expected = _read_file(path / "expected") or None
            started_at = _read_time(path / "startedat") or now
            updated_at = _read_time(path / "updatedat") or now
        total = total if total is not None else stored_total
        expected = expected or stored_expected
        if expected is not None and self._blob_path(expected).exists():
            if not resume:
                shutil.rmtree(path, ignore_errors=True)
            raise AlreadyExists(f"content {expected}: already exists")

        if total is not None and total != stored_total:
            _write_file(path / "total", str(total))
        if expected is not None and expected != stored_expected:
            _write_file(path / "expected", expected)
        if resume:
            fd, offset, hasher, mtime_ns = self._rehash(path / "data")
            updated_at = max(updated_at, _from_ns(mtime_ns))
        else:
            # Left by an open that died before writing ``ref``; not ours to keep.
            for name, value in (("total", total), ("expected", expected)):
                if value is None:
                    (path / name).unlink(missing_ok=True)
            _write_file(path / "startedat", _format_time(now))
            _write_file(path / "updatedat", _format_time(now))
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            fd, offset, hasher = os.open(path / "data", flags, 0o644), 0, hashlib.sha256()
            # Last: an ingest exists once its ref file does.
            _write_file(path / "ref", ref)
        return _Opened(
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
            buf = memoryview(bytearray(_REHASH_CHUNK))
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
        ref = _read_file(path / "ref")
        if ref is None:
            return None
        try:
            st = os.stat(path / "data")
        except FileNotFoundError:
            return None
        mtime = _from_ns(st.st_mtime_ns)
        started_at = _read_time(path / "startedat") or mtime
        # updatedat is written on close only; a killed writer's last write shows in the mtime.
        updated_at = max(_read_time(path / "updatedat") or mtime, mtime)
        return Status(
            ref=ref,
            offset=st.st_size,
            total=_read_int(path / "total"),
            expected=_read_file(path / "expected") or None,
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
            _touch_ctime(target)
            shutil.rmtree(ingest, ignore_errors=True)
            raise BlobExists(digest) from None
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                os.fchmod(fd, 0o644)
                raise
            # No hard links on this filesystem: check then rename. Two racing commits of
            # the same digest may both succeed; the bytes are the same either way.
            if target.exists():
                _touch_ctime(target)
                shutil.rmtree(ingest, ignore_errors=True)
                raise BlobExists(digest) from None
            os.rename(data, target)
        _fsync_dir(self._blobs)
        # Crash tests: a blob, and its ingest still there as a second name of it.
        fault_point("content.commit.after-link")
        shutil.rmtree(ingest)
