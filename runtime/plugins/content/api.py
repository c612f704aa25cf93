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

from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec

from runtime.core.errors import AlreadyExists
from runtime.pkg.digest import DIGEST_ALGORITHM, validate_digest

__all__ = [
    "DIGEST_ALGORITHM",
    "BlobExists",
    "BlobInfo",
    "ContentUsage",
    "Follower",
    "IngestWriter",
    "NamespacedContent",
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

    @property
    def root(self) -> Path:
        """The store's directory (the garbage collector measures its disk use)."""
        ...

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

    def read(
        self, digest: str, offset: int = 0, size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream ``size`` bytes (to the end if ``None``) of a blob from ``offset``, in chunks.

        ``aclose()`` releases the blob's file before the end is reached.
        """
        ...


class ContentUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What the content store holds, counted when asked (the metrics plugin's figures).

    Attributes:
        blobs: Per namespace with any record: how many blobs it records.
        bytes: Per namespace with any record: the size of those blobs summed.
        ingests: Per namespace with ingests in progress: how many.
        stored_blobs: Blobs on disk, each counted once however many namespaces record it.
        stored_bytes: Bytes of the blobs on disk.
    """

    blobs: dict[str, int] = msgspec.field(default_factory=dict)
    bytes: dict[str, int] = msgspec.field(default_factory=dict)
    ingests: dict[str, int] = msgspec.field(default_factory=dict)
    stored_blobs: int = 0
    stored_bytes: int = 0


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


class Follower(Protocol):
    """Reads an ingest's bytes from another thread while they are written.

    ``read`` blocks until bytes are there; it returns ``b""`` only once the
    writer has verified and published the blob, and raises what ended the
    ingest otherwise. ``interrupt`` wakes a blocked ``read`` (which then raises).
    """

    def __enter__(self) -> Follower: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def readable(self) -> bool:
        """True: a follower is a readable binary file."""
        ...

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the ingest, waiting for them if need be."""
        ...

    def interrupt(self) -> None:
        """Wake a blocked ``read`` from another thread."""
        ...

    def close(self) -> None:
        """Release the follower's file descriptor."""
        ...


class IngestWriter(Protocol):
    """An open ingest of the namespaced content service (``content.local``)."""

    def status(self) -> Status:
        """Where the ingest stands (offset, total, expected digest)."""
        ...

    async def write(self, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        """Append ``data`` (or write it at ``offset``, which must be the current one or 0)."""
        ...

    def follow(self) -> Follower | None:
        """A reader of the bytes as they are written; ``None`` once there is nothing to follow."""
        ...

    async def commit(
        self, size: int | None = None, expected: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ContentInfo:
        """Verify, store the blob and record it in the namespace."""
        ...

    async def close(self) -> None:
        """Release the ingest, keeping its bytes for a later resume."""
        ...

    async def abort(self) -> None:
        """Drop the ingest and its bytes."""
        ...


class NamespacedContent(Protocol):
    """What ``content.local`` provides to other plugins: blobs and ingests per namespace."""

    @property
    def store(self) -> Store:
        """The blobs themselves, shared by every namespace (for readers and the collector)."""
        ...

    async def info(self, namespace: str, digest: str) -> ContentInfo:
        """The namespace's record of ``digest``; NotFound if it has none."""
        ...

    async def update_labels(
        self, namespace: str, digest: str, labels: Mapping[str, str]
    ) -> ContentInfo:
        """Set labels; an empty value removes one."""
        ...

    async def delete(self, namespace: str, digest: str) -> None:
        """Remove the namespace's record (the blob goes once no namespace has one)."""
        ...

    async def read(
        self, namespace: str, digest: str, offset: int = 0, size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream a blob the namespace can see (``aclose()`` ends the stream early)."""
        ...

    async def open_writer(
        self,
        namespace: str,
        ref: str,
        *,
        total: int | None = None,
        expected: str | None = None,
        lease: str | None = None,
    ) -> IngestWriter:
        """Open or resume the namespace's ingest ``ref``."""
        ...

    async def status(self, namespace: str, ref: str) -> Status:
        """The status of the namespace's ingest ``ref``."""
        ...

    async def abort(self, namespace: str, ref: str) -> None:
        """Drop the namespace's ingest ``ref``."""
        ...

    async def usage(self) -> ContentUsage:
        """Records, ingests and blobs on disk, counted now (every namespace)."""
        ...
