"""Pull: resolve a reference, fetch what the platforms need, unpack while fetching, record.

The transfer runs in the daemon, like containerd's transfer service. Steps:

1. Resolve the reference to a root descriptor (HEAD, then GET if needed).
   When the image is there already, complete and unpacked, the pull ends
   here, having written nothing (:mod:`.present`).
2. A lease (24 h expiry) holds everything the pull writes until the image
   record exists; it is deleted at the end, whatever happens.
3. Walk the root: an index keeps the best manifest for the platforms (or all
   of them) and is labelled ``containerd.io/gc.ref.content.m.<i>``; a manifest
   is labelled with its config and layers; children are fetched concurrently.
4. Layers download at most ``max_concurrent_downloads`` at a time, bottom
   first, while the unpacker applies each one as it arrives: the unpacker
   follows the layer's ingest while the download writes it, and commits the
   snapshot only once the blob has been verified and stored.
5. Create or update the image record.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio

from runtime.core.errors import MoorageError, NotFound
from runtime.core.faults import fault_point
from runtime.pkg.registry.reference import Reference, parse_reference
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.images.api import (
    LABEL_SNAPSHOTTER,
    Image,
    PullOptions,
)
from runtime.plugins.images.fetch import Fetcher
from runtime.plugins.images.manifests import (
    ConfigFile,
    decode_config,
    decode_index,
    decode_manifest,
    index_child_labels,
    is_attestation,
    is_index,
    kind_of,
    manifest_child_labels,
)
from runtime.plugins.images.platforms import (
    Matcher,
    format_platform,
    host_platform,
    only,
    parse_platform,
    select_manifests,
)
from runtime.plugins.images.present import already_pulled, unpacks
from runtime.plugins.images.progress import Tracker
from runtime.plugins.images.unpack import Unpacker

if TYPE_CHECKING:
    from runtime.plugins.content.api import Follower, IngestWriter
    from runtime.plugins.images.service import ImageService

__all__ = ["pull"]

log = logging.getLogger("moorage.images")


class _Pull:
    """One pull in progress: the walk over the image's documents."""

    def __init__(
        self,
        *,
        svc: ImageService,
        namespace: str,
        ref: Reference,
        fetcher: Fetcher,
        fetch_matcher: Matcher | None,
        unpack_matcher: Matcher,
        unpacker: Unpacker | None,
        tracker: Tracker,
    ) -> None:
        self.svc = svc
        self.namespace = namespace
        self.ref = ref
        self.fetcher = fetcher
        self.fetch_matcher = fetch_matcher
        self.unpack_matcher = unpack_matcher
        self.unpacker = unpacker
        self.tracker = tracker
        #: Top chain ID of every manifest unpacked, by manifest digest.
        self.unpacked: dict[str, str] = {}

    async def node(self, desc: Descriptor, unpack: bool | None = None) -> None:
        """Handle an index or a manifest (``unpack=None``: decide from its platform)."""
        self.tracker.add(desc, kind_of(desc.mediaType))
        if is_index(desc.mediaType):
            await self.index(desc)
        else:
            await self.manifest(desc, unpack)

    async def index(self, desc: Descriptor) -> None:
        index = decode_index(await self.fetcher.document(desc), desc.mediaType)
        limit = None if self.fetch_matcher is None else 1
        children = select_manifests(
            index.manifests, self.fetch_matcher, limit=limit, accept=lambda d: not is_attestation(d)
        )
        if not children:
            offered = sorted(
                {format_platform(m.platform) for m in index.manifests if m.platform is not None}
            )
            raise NotFound(
                f"{self.ref.name}: no manifest matches the platform "
                f"(index offers {', '.join(offered) or 'none'})"
            )
        await self.svc.content.update_labels(
            self.namespace, desc.digest, index_child_labels(children)
        )
        # Among what is fetched, only the best match for the unpack platforms is unpacked.
        best = select_manifests(children, self.unpack_matcher, limit=1)
        unpack_digests = {d.digest for d in best}
        async with anyio.create_task_group() as tg:
            for child in children:
                unpack = None if is_index(child.mediaType) else child.digest in unpack_digests
                tg.start_soon(self.node, child, unpack)

    async def manifest(self, desc: Descriptor, unpack: bool | None) -> None:
        manifest = decode_manifest(await self.fetcher.document(desc), desc.mediaType)
        await self.svc.content.update_labels(
            self.namespace, desc.digest, manifest_child_labels(manifest)
        )
        # Crash tests: the manifest is stored and labelled, no layer fetched yet.
        fault_point("pull.after-manifest")
        self.tracker.add(manifest.config, "config")
        for layer in manifest.layers:
            self.tracker.add(layer, "layer")
        ready = [anyio.Event() for _ in manifest.layers]
        # Set once layer i is downloading (its ingest's writer in writers[i]) or stored.
        started = [anyio.Event() for _ in manifest.layers]
        writers: list[IngestWriter | None] = [None] * len(manifest.layers)

        async def fetch_layer(i: int, layer: Descriptor) -> None:
            def opened(writer: IngestWriter) -> None:
                writers[i] = writer
                started[i].set()

            try:
                await self.fetcher.blob(layer, opened)
            finally:
                writers[i] = None
            started[i].set()
            if i == 0 and len(manifest.layers) > 1:
                # Crash tests: one layer stored, the others maybe not.
                fault_point("pull.mid-layers")
            ready[i].set()

        async def layer_ready(i: int) -> None:
            await ready[i].wait()

        async def layer_stream(i: int) -> Follower | None:
            await started[i].wait()
            writer = writers[i]
            return writer.follow() if writer is not None else None

        async with anyio.create_task_group() as tg:
            # Started bottom first: the download limiter is FIFO, so the layer the
            # unpacker needs next is always among the ones downloading.
            for i, layer in enumerate(manifest.layers):
                tg.start_soon(fetch_layer, i, layer)
            config = decode_config(await self.fetcher.document(manifest.config))
            if self.unpacker is not None and self._should_unpack(unpack, config):
                unpacker = self.unpacker

                async def run_unpack() -> None:
                    started = time.monotonic()
                    top = await unpacker.unpack(
                        manifest, manifest.config, config, layer_ready, layer_stream
                    )
                    self.unpacked[desc.digest] = top
                    self.tracker.timings.add("unpack", time.monotonic() - started)

                tg.start_soon(run_unpack)

    def _should_unpack(self, unpack: bool | None, config: ConfigFile) -> bool:
        return unpacks(unpack, config, self.unpack_matcher)


async def pull(
    svc: ImageService,
    namespace: str,
    reference: str,
    opts: PullOptions,
    tracker: Tracker | None = None,
) -> Image:
    """Pull ``reference`` into ``namespace`` and (unless told not to) unpack it.

    Args:
        svc: The images service.
        namespace: Where the image, content and snapshots go.
        reference: What the user asked for; normalised (``busybox`` becomes
            ``docker.io/library/busybox:latest``).
        opts: Platforms, snapshotter, registry access.
        tracker: Receives progress; one is made if not given.

    Returns:
        The created or updated image record.

    Raises:
        InvalidArgument: A malformed reference or platform.
        NotFound: The registry does not know the reference, or no manifest fits
            the platform.
        FailedPrecondition: Content does not match its digest, or a layer's
            diffID does not match the config.
        Unauthenticated, PermissionDenied, Unavailable: From the registry.
    """
    ref = parse_reference(reference)
    tracker = tracker or Tracker(ref.name)
    wanted = [parse_platform(p) for p in opts.platforms] or [host_platform()]
    unpack_matcher = only(wanted)
    fetch_matcher = None if opts.all_platforms else unpack_matcher
    snapshotter = svc.snapshotter(opts.snapshotter) if opts.unpack else None
    async with svc.registry_for(opts) as client:
        started = time.monotonic()
        root, host = await client.resolve(ref)
        tracker.timings.add("resolve", time.monotonic() - started)
        tracker.resolved(root, host)
        started = time.monotonic()
        present = await already_pulled(
            svc, namespace, ref, root, fetch=fetch_matcher, unpack=unpack_matcher,
            snapshotter=snapshotter, tracker=tracker,
        )
        if present is not None:
            tracker.timings.add("transfer", time.monotonic() - started)
            log.info("pulled %s (%s) in %.3fs: present already", ref.name, root.digest,
                     tracker.timings.elapsed())
            return present
        lease = await svc.leases.create(
            namespace,
            labels={"moorage/operation": "pull"},
            expire=timedelta(seconds=svc.config.lease_expire),
        )
        try:
            limit = opts.max_concurrent_downloads or svc.config.max_concurrent_downloads
            fetcher = Fetcher(
                namespace=namespace,
                content=svc.content,
                client=client,
                ref=ref,
                locks=svc.locks,
                downloads=anyio.Semaphore(max(1, limit)),
                lease=lease.id,
                tracker=tracker,
                keep=svc.keeper(namespace, lease.id),
            )
            unpacker = None
            if snapshotter is not None:
                unpacker = svc.unpacker(namespace, snapshotter, lease.id, tracker)
            run = _Pull(
                svc=svc,
                namespace=namespace,
                ref=ref,
                fetcher=fetcher,
                fetch_matcher=fetch_matcher,
                unpack_matcher=unpack_matcher,
                unpacker=unpacker,
                tracker=tracker,
            )
            started = time.monotonic()
            await run.node(root)
            tracker.timings.add("transfer", time.monotonic() - started)
            labels: dict[str, str] = {}
            if snapshotter is not None and run.unpacked:
                # One platform is unpacked; its top chain ID is what `run` prepares on.
                labels[LABEL_SNAPSHOTTER + snapshotter.name] = next(iter(run.unpacked.values()))
            target = Descriptor(mediaType=root.mediaType, digest=root.digest, size=root.size)
            # Crash tests: everything fetched and unpacked, held only by the pull's lease.
            fault_point("pull.before-image-record")
            image = await svc.put_image(
                namespace, Image(name=ref.name, target=target, labels=labels)
            )
            tracker.bytes += fetcher.received
            log.info(
                "pulled %s (%s) in %.3fs: %s",
                ref.name,
                root.digest,
                tracker.timings.elapsed(),
                tracker.timings.summary(),
            )
            return image
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(MoorageError):
                await svc.leases.delete(namespace, lease.id)
