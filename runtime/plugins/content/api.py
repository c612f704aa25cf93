"""The content store contract: records, the digest rule and the store Protocols.

This is the only module other plugins import from the content package. The
backend (:mod:`runtime.plugins.content.local`) knows bytes, digests and
ingests; the metadata plugin layers namespaces and labels over the same
Protocol.

Digests are ``sha256:`` followed by 64 lowercase hex digits, nothing else:
:func:`validate_digest` is the single gate, and since the hex part becomes a
file name it also keeps ``../`` and friends out of the blob directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import BinaryIO, Protocol

import msgspec

from runtime.core.errors import AlreadyExists
from runtime.pkg.digest import DIGEST_ALGORITHM, validate_digest

__all__ = [
    "DIGEST_ALGORITHM",
    "BlobExists",
    "BlobInfo",
    "Status",
    "Store",
    "Writer",
    "validate_digest",
]

class BlobExists(AlreadyExists):
    """A commit found its blob already stored.

    ``digest`` says which, so a caller can record the blob as its own: the
    bytes were verified either way.
    """

    def __init__(self, digest: str) -> None:
        super().__init__(f"content {digest}: already exists")
        self.digest = digest


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one ingest (an upload in progress, keyed by its ref).

    Attributes:
        ref: The client's idempotency key for the upload.
        offset: Bytes received so far; a resuming client seeks its source here.
        total: The size announced when the ingest was opened, if any.
        expected: The digest announced for the ingest, if any.
        started_at: When the ingest was first opened.
        updated_at: When data was last written (or the ingest last opened).
    """

    ref: str
    offset: int
    total: int | None = None
    expected: str | None = None
    started_at: datetime
    updated_at: datetime


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A committed blob as the backend sees it (labels live in the metadata store).

    Attributes:
        digest: ``sha256:<hex>`` of the bytes.
        size: Length in bytes.
        created_at: When the blob was committed (its file's modification time).
    """

    digest: str
    size: int
    created_at: datetime


class Writer(Protocol):
    """An open ingest: holds the ref's lock until committed, closed or aborted."""

    def status(self) -> Status:
        """Return the live state of the ingest, including unflushed bytes."""
        ...

    async def write(self, data: bytes, offset: int | None = None) -> None:
        """Append ``data``; ``offset`` must equal the current offset, or be 0 to restart."""
        ...

    async def commit(self, size: int | None = None, expected: str | None = None) -> str:
        """Verify size and digest, publish the blob, end the writer; return the digest."""
        ...

    async def close(self) -> None:
        """Release the ref's lock and keep the ingest for a later resume."""
        ...

    async def abort(self) -> None:
        """Release the ref's lock and delete the ingest."""
        ...


class Store(Protocol):
    """Content-addressed blob storage with resumable ingests."""

    async def open_writer(
        self, ref: str, *, total: int | None = None, expected: str | None = None
    ) -> Writer:
        """Open (or resume) the ingest for ``ref``; see the backend for the errors."""
        ...

    async def status(self, ref: str) -> Status:
        """Return the state of the ingest ``ref``."""
        ...

    async def list_statuses(self) -> list[Status]:
        """Return the state of every ingest, sorted by ref."""
        ...

    async def abort(self, ref: str) -> None:
        """Delete the ingest ``ref`` unless a writer holds it."""
        ...

    async def info(self, digest: str) -> BlobInfo:
        """Return size and creation time of a committed blob."""
        ...

    async def exists(self, digest: str) -> bool:
        """Return whether the blob is committed."""
        ...

    async def delete(self, digest: str) -> None:
        """Remove a committed blob."""
        ...

    async def walk(self) -> list[BlobInfo]:
        """Return every committed blob, sorted by digest."""
        ...

    def open_reader(self, digest: str) -> BinaryIO:
        """Open a committed blob for reading (blocking, but only an ``open``)."""
        ...

    def read(self, digest: str, offset: int = 0, size: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``size`` bytes (to the end if ``None``) of a blob from ``offset``, in chunks."""
        ...


class ContentInfo(msgspec.Struct, kw_only=True):
    """A blob as one namespace sees it: bytes shared, labels per namespace."""

    digest: str
    size: int
    labels: dict[str, str] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ContentCreate(msgspec.Struct, kw_only=True):
    """Event ``/content/create``."""

    digest: str
    size: int


class ContentDelete(msgspec.Struct, kw_only=True):
    """Event ``/content/delete``."""

    digest: str
