"""One ingest's directory on disk: its lock, its state files, resuming it, reading its status.

Layout (under the store's ``ingest/``, see :mod:`.store`)::

    <sha256(ref)>/  ref  total  expected  startedat  updatedat  data  lock

An ingest counts only once its ``ref`` file exists, and that file is written
last. The digest state is not persisted: resuming re-hashes ``data`` and takes
its size as the offset. Everything here blocks: call it in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.core.errors import AlreadyExists, FailedPrecondition, NotFound
from runtime.plugins.content.api import Status, validate_digest
from runtime.plugins.content.local.files import (
    REHASH_CHUNK,
    format_time,
    from_ns,
    locked,
    read_file,
    read_int,
    read_time,
    utc_now,
    write_file,
)
from runtime.plugins.content.local.writer import OpenedIngest

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["directory", "load", "lock", "read_status", "rehash"]


def directory(ingests: Path, ref: str) -> Path:
    """The directory of ingest ``ref`` under ``ingests``."""
    # Hashed, so any ref string maps to a safe, fixed-length directory name.
    import hashlib

    return ingests / hashlib.sha256(ref.encode()).hexdigest()


def lock(path: Path, ref: str, *, create: bool) -> int:
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


def load(
    path: Path,
    ref: str,
    total: int | None,
    expected: str | None,
    lock_fd: int,
    blobs: Path,
) -> OpenedIngest:
    """Initialise or resume the ingest at ``path``; the caller holds its lock.

    ``blobs`` is the committed blobs' directory: an ingest of a blob already
    there is refused (AlreadyExists).
    """
    import hashlib
    import shutil

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
    if expected is not None and (blobs / validate_digest(expected)).exists():
        if not resume:
            shutil.rmtree(path, ignore_errors=True)
        raise AlreadyExists(f"content {expected}: already exists")

    if total is not None and total != stored_total:
        write_file(path / "total", str(total))
    if expected is not None and expected != stored_expected:
        write_file(path / "expected", expected)
    if resume:
        fd, offset, hasher, mtime_ns = rehash(path / "data")
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


def rehash(data: Path) -> tuple[int, int, _Hash, int]:
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
        import hashlib

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


def read_status(path: Path) -> Status | None:
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
