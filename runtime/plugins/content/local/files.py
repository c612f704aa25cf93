"""The file operations under the local content store: batch sizes, OS errors, small state files.

Everything here runs in worker threads (or is cheap enough for the event loop)
and knows nothing of blobs or ingests; :mod:`.writer` and :mod:`.store` build on it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

from runtime.core.errors import (
    InvalidArgument,
    MoorageError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "BATCH_SIZE",
    "READ_CHUNK_SIZE",
    "WRITEBACK_WINDOW",
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
REHASH_CHUNK = 4 << 20
# link() errors that mean "this filesystem has no hard links", not "you may not".
NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}
SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>; not exposed by the os module


@functools.cache
def sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Return libc's ``sync_file_range`` (Linux), or None where there is none."""
    import ctypes  # by the first ingest, not at the content plugin's registration

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", fn)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk, without waiting for it.

    Only a hint: durability still comes from the fsync at commit, so errors are ignored.
    """
    fn = sync_file_range()
    if fn is not None:
        fn(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def leaked(ref: str, fd: int, lock_fd: int) -> None:
    """Finalizer of a Writer collected while open: close its files, releasing the flock."""
    for each in (fd, lock_fd):
        with contextlib.suppress(OSError):
            os.close(each)
    warnings.warn(f"writer for ref {ref} was not closed", ResourceWarning, stacklevel=1)


def locked(ref: str) -> Unavailable:
    return Unavailable(f"ref {ref} locked: another writer is open, retry later")


def translate(exc: OSError, what: str) -> MoorageError:
    """Map an OSError to the domain error closest to it."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{what}: {reason}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: {reason}")
    return MoorageError(f"{what}: {reason}")


@contextlib.contextmanager
def os_errors(what: str, *, missing: str | None = None) -> Iterator[None]:
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
            raise translate(exc, what) from exc
        raise NotFound(missing) from None
    except OSError as exc:
        raise translate(exc, what) from exc


def check_ref(ref: str) -> None:
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument(f"invalid ref {ref!r}: want a non-empty string")


def utc_now() -> datetime:
    return datetime.now(UTC)


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def write_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so a crash leaves the old or the new text, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def read_time(path: Path) -> datetime | None:
    text = read_file(path)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def read_int(path: Path) -> int | None:
    text = read_file(path)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def format_time(when: datetime) -> str:
    # RFC 3339 with a "Z", as containerd writes its timestamp files.
    return when.isoformat().replace("+00:00", "Z")


def pwrite_all(fd: int, buf: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def touch_ctime(blob: Path) -> None:
    """Mark a blob as just committed again (its ctime), as a new link would be.

    Garbage collection leaves blobs changed after it started for the next run: a
    commit deduplicated onto an old, unreferenced blob is about to record it.
    Same mode, so only the ctime changes.
    """
    with contextlib.suppress(FileNotFoundError):
        os.chmod(blob, 0o444)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
