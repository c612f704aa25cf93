"""Push: upload an image (or index) to a registry, skipping what it has already.

Order, as containerd's push handler: blobs (configs and layers) first, then
the manifests by digest, then indexes, children before parents, and the root
last under the reference's tag. Per blob:

1. ``HEAD`` it in the target repository: present means done;
2. else, when its ``containerd.io/distribution.source.<registry>`` label names
   other repositories of the same registry, ask for a cross-repository mount;
3. else upload it from the content store.

Pushed blobs get the target repository added to their distribution-source
label, so a later push to a third repository can mount from it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio

from runtime.core.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg.registry.client import RegistryClient
from runtime.pkg.registry.reference import Reference, parse_reference
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.images.api import LABEL_DISTRIBUTION_SOURCE, BlobStatus, PushOptions
from runtime.plugins.images.fetch import source_labels
from runtime.plugins.images.manifests import Walked, kind_of
from runtime.plugins.images.platforms import matcher_for
from runtime.plugins.images.progress import Tracker

if TYPE_CHECKING:
    from runtime.plugins.images.service import ImageService

__all__ = ["push"]

log = logging.getLogger("moorage.images")


class _Push:
    """One push in progress."""

    def __init__(
        self,
        svc: ImageService,
        namespace: str,
        client: RegistryClient,
        ref: Reference,
        tracker: Tracker,
        limit: int,
    ) -> None:
        self.svc = svc
        self.namespace = namespace
        self.client = client
        self.ref = ref
        self.tracker = tracker
        self.uploads = anyio.Semaphore(max(1, limit))

    async def blob(self, desc: Descriptor) -> None:
        self.tracker.add(desc, kind_of(desc.mediaType))
        try:
            info = await self.svc.content.info(self.namespace, desc.digest)
        except NotFound:
            raise FailedPrecondition(
                f"cannot push {self.ref.name}: blob {desc.digest} is not "
                "in the content store (pull it first)"
            ) from None
        async with self.uploads:
            if await self.client.blob_exists(self.ref, desc.digest):
                status = BlobStatus.EXISTS
            elif await self._mount(desc, info.labels):
                status = BlobStatus.MOUNTED
            else:
                self.tracker.status(desc.digest, BlobStatus.UPLOADING)
                chunks = await self.svc.content.read(self.namespace, desc.digest)
                await self.client.push_blob(self.ref, desc, self._counted(desc, chunks))
                status = BlobStatus.DONE
            self.tracker.status(desc.digest, status)
        labels = source_labels(info.labels, self.ref.domain, self.ref.path)
        if labels:
            with contextlib.suppress(NotFound):
                await self.svc.content.update_labels(self.namespace, desc.digest, labels)

    async def _counted(
        self, desc: Descriptor, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            self.tracker.bytes += len(chunk)
            self.tracker.advance(desc.digest, sent)
            yield chunk

    async def _mount(self, desc: Descriptor, labels: dict[str, str]) -> bool:
        sources = labels.get(LABEL_DISTRIBUTION_SOURCE + self.ref.domain, "")
        for repo in (r for r in sources.split(",") if r and r != self.ref.path):
            if await self.client.mount_blob(self.ref, desc.digest, repo):
                return True
        return False

    async def document(self, desc: Descriptor, tag_or_digest: str) -> None:
        self.tracker.add(desc, kind_of(desc.mediaType))
        data = await self.svc.read(self.namespace, desc)
        if data is None:
            raise FailedPrecondition(f"cannot push {self.ref.name}: {desc.digest} is missing")
        self.tracker.status(desc.digest, BlobStatus.UPLOADING)
        await self.client.push_manifest(self.ref, desc, data, tag_or_digest)
        self.tracker.status(desc.digest, BlobStatus.DONE)

    async def run(self, root: Descriptor, walked: Walked) -> None:
        for _, manifest in walked.manifests:
            async with anyio.create_task_group() as tg:
                for blob in (manifest.config, *manifest.layers):
                    tg.start_soon(self.blob, blob)
        tag_or_digest = self.ref.tag or root.digest
        for desc, _ in walked.manifests:
            await self.document(desc, tag_or_digest if desc.digest == root.digest else desc.digest)
        # Children before parents: the registry checks that an index's manifests exist.
        for desc in reversed(walked.indexes):
            await self.document(desc, tag_or_digest if desc.digest == root.digest else desc.digest)


async def push(
    svc: ImageService,
    namespace: str,
    name: str,
    reference: str,
    opts: PushOptions,
    tracker: Tracker | None = None,
) -> Descriptor:
    """Push image ``name`` of ``namespace`` to ``reference``.

    With ``opts.platforms`` only the matching manifests are pushed and, when
    the image is an index, the best match is pushed as the root instead of the
    index (a registry refuses an index whose manifests it does not have).

    Returns:
        The descriptor pushed as the root.

    Raises:
        NotFound: No such image.
        FailedPrecondition: Content of the image is missing locally (an index
            pulled for one platform: push with ``platforms``).
        InvalidArgument: ``reference`` names a digest other than the image's.
        Unauthenticated, PermissionDenied, Unavailable: From the registry.
    """
    image = await svc.get(namespace, name)
    ref = parse_reference(reference)
    tracker = tracker or Tracker(ref.name)
    matcher = matcher_for(opts.platforms) if opts.platforms else None
    walked = await svc.walk(namespace, image, matcher, skip_missing=True)
    root = image.target
    if walked.missing:
        if matcher is None or not walked.manifests:
            raise FailedPrecondition(
                f"cannot push {name}: manifest {walked.missing[0]} is not in the content store "
                "(only some platforms were pulled); push with a platform to send one manifest"
            )
        root = walked.manifests[0][0]
        walked = Walked(manifests=walked.manifests[:1])
    elif matcher is not None and walked.indexes:
        root = walked.manifests[0][0]
        walked = Walked(manifests=walked.manifests[:1])
    if ref.digest and ref.digest != root.digest:
        raise InvalidArgument(f"cannot push {root.digest} as {ref.name}")
    root = Descriptor(mediaType=root.mediaType, digest=root.digest, size=root.size)
    started = time.monotonic()
    async with svc.registry_for(opts) as client:
        await _Push(svc, namespace, client, ref, tracker, svc.config.max_concurrent_downloads).run(
            root, walked
        )
    tracker.timings.add("push", time.monotonic() - started)
    log.info(
        "pushed %s as %s (%s) in %.3fs", name, ref.name, root.digest, time.monotonic() - started
    )
    return root
