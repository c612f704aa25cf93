"""The ingest writer of the local content store, and the follower reading an ingest as it grows.

A :class:`Writer` holds one ingest's lock from open to commit, close or abort;
bytes are written and hashed in batches of at least
:data:`~runtime.plugins.content.local.files.BATCH_SIZE` in two threads at once.
A :class:`Follower` (:meth:`Writer.follow`) reads the ingest's bytes from another
thread while they are written, and sees their end only once the writer has
verified and published the blob: a pull applies a layer that way while it downloads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, final

import anyio
import msgspec
from anyio import to_thread

from runtime.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
    OutOfRange,
    Unavailable,
)
from runtime.plugins.content.api import BlobExists, Status, validate_digest
from runtime.plugins.content.local.files import (
    BATCH_SIZE,
    READ_CHUNK_SIZE,
    WRITEBACK_WINDOW,
    format_time,
    leaked,
    os_errors,
    pwrite_all,
    start_writeback,
    translate,
    utc_now,
    write_file,
)

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "Follower",
    "OpenedIngest",
    "Writer",
]
if TYPE_CHECKING:
    from runtime.plugins.content.local.store import ContentStore


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
        with os_errors(f"read ingest {self._ref}"):
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


class OpenedIngest(msgspec.Struct):
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

    def __init__(self, store: ContentStore, opened: OpenedIngest) -> None:
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
        self._finalizer = weakref.finalize(self, leaked, self._ref, self._fd, self._lock_fd)

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
            self._updated_at = utc_now()
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
            self._updated_at = utc_now()
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
                with anyio.CancelScope(shield=True), os_errors(f"commit {self._ref}"):
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
        with os_errors(f"truncate ingest {self._ref}"):
            await to_thread.run_sync(os.ftruncate, self._fd, 0)
        self._pending.clear()
        self._flushed = self._written_back = 0
        import hashlib

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
                pwrite_all(self._fd, buf, start)
                end = start + len(buf)
                if end - self._written_back >= WRITEBACK_WINDOW:
                    start_writeback(self._fd, self._written_back, end - self._written_back)
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
            raise translate(failures[0], f"write to ingest {self._ref}") from failures[0]
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
                    import shutil

                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    write_file(path / "updatedat", format_time(updated_at))
            finally:
                # Last: nobody else may take the ref before we are done with its directory.
                os.close(lock_fd)

        try:
            with anyio.CancelScope(shield=True), os_errors(f"close ingest {self._ref}"):
                await to_thread.run_sync(work)
        finally:
            self._store._writers.pop(self._ref, None)
