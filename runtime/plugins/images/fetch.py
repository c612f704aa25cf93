"""Fetch: move one blob from a registry into the content store, resumably and once.

Each blob goes through a content ingest named ``<kind>-<digest>`` with the
expected size and digest, so a pull interrupted at any point (even by
``SIGKILL``) resumes from the ingest's recorded offset: the registry is asked
for ``Range: bytes=<offset>-``. AlreadyExists from the content store means the
blob is there already, which is success.

The key ``blob://<digest>`` is locked around the whole transfer: a second pull
wanting the same blob waits, then finds it stored and skips the download.
Fetched blobs get ``containerd.io/distribution.source.<registry>=<repos>`` and
``moorage/fetched.from=<host URL>``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from runtime.core.identifiers import MAX_LABEL
from runtime.core.locks import KeyedLocks
from runtime.pkg.registry.client import RegistryClient
from runtime.pkg.registry.reference import Reference
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.content.api import IngestWriter, NamespacedContent
from runtime.plugins.images.api import LABEL_DISTRIBUTION_SOURCE, LABEL_FETCHED_FROM, BlobStatus
from runtime.plugins.images.documents import check_document
from runtime.plugins.images.manifests import join, kind_of
from runtime.plugins.images.progress import Tracker

__all__ = ["Fetcher", "Keep", "Opened", "source_labels"]

log = logging.getLogger("moorage.images")

# A writer for the same ref held elsewhere (an API client uploading it): retry with
# containerd's randomised backoff before giving up.
_LOCKED_RETRIES = 8


#: ``keep(resource_type, resource_id)``: hold an object under the operation's lease.
Keep = Callable[[str, str], Awaitable[None]]

#: ``opened(writer)``: told that a download into ``writer`` (an open ingest) is starting.
Opened = Callable[[IngestWriter], None]


async def _keep_nothing(resource_type: str, resource_id: str) -> None:
    return None


def source_labels(existing: Mapping[str, str], domain: str, repo: str) -> dict[str, str]:
    """The distribution-source label with ``repo`` added to the registry's repository set.

    Returns an empty dict when nothing changes, or when the value would pass the
    label size limit (containerd skips the label then, too).
    """
    key = LABEL_DISTRIBUTION_SOURCE + domain
    repos = {r for r in existing.get(key, "").split(",") if r}
    if repo in repos:
        return {}
    value = ",".join(sorted(repos | {repo}))
    if len(key) + len(value) > MAX_LABEL:
        return {}
    return {key: value}


class Fetcher:
    """Fetches the blobs of one reference into one namespace's content store.

    Args:
        namespace: Whose content store records the blobs.
        content: The content service.
        client: An entered registry client.
        ref: The reference being pulled (repository and registry of the blobs).
        locks: Keyed locks shared by the plugin's operations.
        downloads: Limits concurrent downloads (``max_concurrent_downloads``).
        lease: Lease that new ingests and blobs join.
        tracker: Progress of the operation.
        keep: Adds an existing object to the operation's lease, so that the
            garbage collector leaves it alone until the image refers to it.
    """

    def __init__(
        self,
        *,
        namespace: str,
        content: NamespacedContent,
        client: RegistryClient,
        ref: Reference,
        locks: KeyedLocks,
        downloads: anyio.Semaphore,
        lease: str | None,
        tracker: Tracker,
        keep: Keep | None = None,
    ) -> None:
        self.namespace = namespace
        self.content = content
        self.client = client
        self.ref = ref
        self.locks = locks
        self.downloads = downloads
        self.lease = lease
        self.tracker = tracker
        self.keep = keep or _keep_nothing
        #: Bytes received from the network by this fetcher.
        self.received = 0

    async def document(self, desc: Descriptor) -> bytes:
        """Fetch (or find) a small blob (index, manifest, config) and return its bytes.

        Documents skip the download limiter: they are small, and the unpacker waits
        for the config, which would otherwise queue behind the layers.
        """
        await self.blob(desc, limited=False)
        data = await join(await self.content.read(self.namespace, desc.digest))
        check_document(desc, data)  # also what an earlier pull stored
        return data

    async def blob(
        self, desc: Descriptor, opened: Opened | None = None, *, limited: bool = True
    ) -> None:
        """Make sure ``desc`` is in the namespace's content store.

        Args:
            desc: The blob.
            opened: Called with the ingest's writer when a download starts (before
                it writes anything), so that a consumer can follow the bytes as they
                arrive (``writer.follow()``). Not called when the blob is there
                already or was stored by someone else meanwhile.
            limited: Take one of the ``max_concurrent_downloads`` slots.

        Raises:
            FailedPrecondition: The registry sent bytes of another digest or size
                (the ingest is dropped, so a retry starts afresh).
            NotFound, Unauthenticated, Unavailable: From the registry.
        """
        if desc.size <= 0:
            raise FailedPrecondition(f"blob {desc.digest} has invalid size {desc.size}")
        kind = kind_of(desc.mediaType)
        self.tracker.add(desc, kind)
        async with self.locks.hold(f"blob://{desc.digest}"):
            if await self._present(desc):
                return
            if not limited:
                await self._download(desc, kind, opened)
                return
            async with self.downloads:
                await self._download(desc, kind, opened)

    async def _present(self, desc: Descriptor) -> bool:
        """True (and labelled, and marked ``exists``) if the namespace already has the blob."""
        try:
            info = await self.content.info(self.namespace, desc.digest)
        except NotFound:
            return False
        await self.keep("content", desc.digest)
        await self._label(desc.digest, info.labels, "")
        self.tracker.status(desc.digest, BlobStatus.EXISTS)
        return True

    async def _label(self, digest: str, existing: Mapping[str, str], host: str) -> None:
        labels = source_labels(existing, self.ref.domain, self.ref.path)
        if host and existing.get(LABEL_FETCHED_FROM) != host:
            labels[LABEL_FETCHED_FROM] = host
        if labels:
            with contextlib.suppress(NotFound):
                await self.content.update_labels(self.namespace, digest, labels)

    async def _open_writer(self, desc: Descriptor, kind: str) -> IngestWriter:
        delay = 0.016
        for attempt in range(_LOCKED_RETRIES):
            try:
                return await self.content.open_writer(
                    self.namespace,
                    f"{kind}-{desc.digest}",
                    total=desc.size,
                    expected=desc.digest,
                    lease=self.lease,
                )
            except Unavailable:
                if attempt == _LOCKED_RETRIES - 1:
                    raise
                await anyio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _download(self, desc: Descriptor, kind: str, opened: Opened | None) -> None:
        try:
            writer = await self._open_writer(desc, kind)
        except AlreadyExists:
            # Stored by another namespace: the namespace gained its record.
            info = await self.content.info(self.namespace, desc.digest)
            await self._label(desc.digest, info.labels, "")
            self.tracker.status(desc.digest, BlobStatus.EXISTS)
            return
        started = time.monotonic()
        host = ""
        try:
            offset = writer.status().offset
            if offset > desc.size:
                await writer.write(b"", 0)  # more than the blob: corrupt, start again
                offset = 0
            self.tracker.status(desc.digest, BlobStatus.DOWNLOADING, offset=offset, resumed=offset)
            if opened is not None:
                opened(writer)
            if kind in ("index", "manifest"):
                # Manifests come from /manifests/ (not every registry serves them as
                # blobs), whole and verified; they are small, so no resume is needed.
                data = await self.client.fetch_manifest(self.ref, desc)
                check_document(desc, data)  # before it reaches the store
                await writer.write(data, 0)
                offset = len(data)
                self.received += len(data)
            elif offset < desc.size:
                async with self.client.fetch_blob(self.ref, desc, offset=offset) as stream:
                    async for chunk in stream:
                        await writer.write(chunk)
                        offset += len(chunk)
                        self.received += len(chunk)
                        self.tracker.advance(desc.digest, offset)
                    host = stream.host
            labels = source_labels({}, self.ref.domain, self.ref.path)
            if host:
                labels[LABEL_FETCHED_FROM] = host
            await writer.commit(desc.size, desc.digest, labels)
        except AlreadyExists:
            info = await self.content.info(self.namespace, desc.digest)
            await self._label(desc.digest, info.labels, host)
        except (FailedPrecondition, InvalidArgument):
            # Wrong bytes are in the ingest (or a refused document is on its way):
            # resuming would only repeat the mismatch.
            await writer.abort()
            self.tracker.status(desc.digest, BlobStatus.FAILED)
            raise
        except BaseException:
            await writer.close()
            self.tracker.status(desc.digest, BlobStatus.FAILED)
            raise
        self.tracker.timings.add(f"fetch.{kind}", time.monotonic() - started)
        self.tracker.status(desc.digest, BlobStatus.DONE, host=host)
        log.debug(
            "fetched %s (%d bytes) from %s in %.3fs",
            desc.digest,
            desc.size,
            host,
            time.monotonic() - started,
        )
