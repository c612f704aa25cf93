"""Progress of one pull or push: live per-blob state, drained as throttled messages.

Workers update the tracker synchronously and never wait for a reader: the
tracker keeps one record per blob plus the set changed since the last read, so
a slow (or absent) reader costs a bounded amount of memory and the transfer
never stalls on it. Status changes also go to the event exchange.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, final

import anyio
import msgspec

from runtime.pkg.registry.types import Descriptor
from runtime.plugins.images.api import (
    BlobProgress,
    BlobStatus,
    Done,
    Failed,
    Progress,
    ProgressEvent,
    Resolved,
    UnpackStatus,
)

__all__ = ["Timings", "Tracker"]

#: Publishes ``(topic, event)`` on the exchange for the operation's namespace.
Publish = Callable[[str, msgspec.Struct], Any]


@final
class Timings:
    """Wall-clock seconds spent per phase (``resolve``, ``fetch``, ``unpack``...)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.phases: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to ``phase`` (phases that overlap each count their own time)."""
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def elapsed(self) -> float:
        """Seconds since the operation started."""
        return time.monotonic() - self.start

    def summary(self) -> dict[str, float]:
        """Phases rounded to milliseconds, plus ``total``."""
        out = {k: round(v, 3) for k, v in self.phases.items()}
        out["total"] = round(self.elapsed(), 3)
        return out


@final
class Tracker:
    """Live progress of one operation on one image.

    Args:
        name: The image (or reference) the operation is about.
        topic: Event topic for status changes (``/images/pull/progress``).
        publish: Publishes on the exchange, or ``None``.
    """

    def __init__(self, name: str, topic: str = "", publish: Publish | None = None) -> None:
        self.name = name
        self.topic = topic
        self.publish = publish
        self.timings = Timings()
        #: Bytes moved over the network by the operation.
        self.bytes = 0
        self.blobs: dict[str, BlobProgress] = {}
        self._started: dict[str, float] = {}
        self._dirty: dict[str, None] = {}
        self._messages: list[Progress] = []
        self._wakeup = anyio.Event()
        self._closed = False
        self._finished = anyio.Event()

    # -- updates from workers ---------------------------------------------------

    def _changed(self, digest: str = "") -> None:
        if digest:
            self._dirty[digest] = None
        self._wakeup.set()

    def resolved(self, desc: Descriptor, host: str) -> None:
        """The reference resolved to ``desc`` on ``host``."""
        self._messages.append(
            Resolved(
                name=self.name,
                digest=desc.digest,
                media_type=desc.mediaType,
                size=desc.size,
                host=host,
            )
        )
        self._changed()

    def add(self, desc: Descriptor, kind: str) -> BlobProgress:
        """Register a blob (idempotent) and return its live record."""
        record = self.blobs.get(desc.digest)
        if record is None:
            record = BlobProgress(
                digest=desc.digest, kind=kind, media_type=desc.mediaType, total=desc.size
            )
            self.blobs[desc.digest] = record
            self._changed(desc.digest)
        return record

    def status(
        self,
        digest: str,
        status: BlobStatus,
        *,
        host: str = "",
        offset: int | None = None,
        resumed: int | None = None,
    ) -> None:
        """Set a blob's transfer status (publishes the change)."""
        record = self.blobs[digest]
        now = time.monotonic()
        if status in (BlobStatus.DOWNLOADING, BlobStatus.UPLOADING):
            self._started[digest] = now
        elif digest in self._started:
            record.seconds = round(now - self._started.pop(digest), 3)
        record.status = status
        if host:
            record.host = host
        if offset is not None:
            record.offset = offset
        if resumed is not None:
            record.resumed = resumed
        if status in (BlobStatus.DONE, BlobStatus.EXISTS, BlobStatus.MOUNTED):
            record.offset = record.total
        self._changed(digest)
        self._publish(record)

    def advance(self, digest: str, offset: int) -> None:
        """Bytes transferred so far (not published: too frequent)."""
        self.blobs[digest].offset = offset
        self._changed(digest)

    def unpack(
        self, digest: str, status: UnpackStatus, *, chain_id: str = "", seconds: float | None = None
    ) -> None:
        """Set a layer's unpack status (publishes the change)."""
        record = self.blobs[digest]
        record.unpack = status
        if chain_id:
            record.chain_id = chain_id
        if seconds is not None:
            record.seconds = round(seconds, 3)
        self._changed(digest)
        self._publish(record)

    def finish(self, message: Done | Failed) -> None:
        """End the operation with its result; readers drain and stop."""
        self._messages.append(message)
        self._closed = True
        self._finished.set()
        self._changed()

    def _publish(self, record: BlobProgress) -> None:
        if self.publish is not None and self.topic:
            copy = msgspec.structs.replace(record)
            self.publish(self.topic, ProgressEvent(name=self.name, blob=copy))

    # -- reading ----------------------------------------------------------------

    def _drain(self) -> list[Progress]:
        # The result goes last, after the final state of every blob.
        final = [m for m in self._messages if isinstance(m, Done | Failed)]
        out: list[Progress] = [m for m in self._messages if not isinstance(m, Done | Failed)]
        out.extend(msgspec.structs.replace(self.blobs[d]) for d in self._dirty)
        out.extend(final)
        self._messages.clear()
        self._dirty.clear()
        return out

    async def messages(self, interval: float = 0.1) -> AsyncIterator[Progress]:
        """Yield changes at most every ``interval`` seconds, ending after the result.

        The result itself is not held back: an operation that ends within the
        interval (a pull of an image already there) answers at once.
        """
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            closed = self._closed
            for message in self._drain():
                yield message
            if closed:
                return
            with anyio.move_on_after(interval):
                await self._finished.wait()
