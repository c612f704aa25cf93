"""A pull with nothing left to do: the image is stored, complete, labelled and unpacked.

Scripts pull before each run, and mostly find the tag where it was. The full
pull (:mod:`.pull`) then fetches nothing and unpacks nothing, yet it makes a
lease, adds every blob and snapshot it finds to it, writes the GC labels again
and deletes the lease, which schedules a garbage collection: a dozen database
writes and a collection for a pull that changes nothing.

:func:`already_pulled` reads instead, once the reference has resolved: when the
image record points at the resolved root, every document, config and layer the
platforms need is in the namespace with the labels the full pull would give
it, and the snapshot chain it would unpack is committed, the pull is done. The
tracker then reports each blob (and each layer's unpack) ``exists``, as the
full pull does, and nothing is written. Anything else (a blob or a label
missing, a document its checks refuse, an index within an index) is left to the
full pull, with its repairs and its error messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.core.errors import InvalidArgument, NotFound
from runtime.pkg.registry.reference import Reference
from runtime.pkg.registry.types import Descriptor, Platform
from runtime.plugins.images.api import (
    LABEL_GC_REF_SNAPSHOT,
    LABEL_SNAPSHOTTER,
    BlobStatus,
    Image,
    UnpackStatus,
)
from runtime.plugins.images.documents import check_document
from runtime.plugins.images.fetch import source_labels
from runtime.plugins.images.manifests import (
    ConfigFile,
    chain_ids,
    decode_config,
    decode_index,
    decode_manifest,
    index_child_labels,
    is_attestation,
    is_index,
    kind_of,
    manifest_child_labels,
)
from runtime.plugins.images.platforms import Matcher, select_manifests
from runtime.plugins.images.progress import Tracker

if TYPE_CHECKING:
    from collections.abc import Mapping

    from runtime.plugins.images.service import ImageService
    from runtime.plugins.snapshots.api import NamespacedSnapshots

__all__ = ["already_pulled", "unpacks"]


def unpacks(unpack: bool | None, config: ConfigFile, matcher: Matcher) -> bool:
    """Whether a pull unpacks a manifest: as told, else if its config's platform fits.

    ``unpack`` is ``None`` for a manifest that is the image's root (no index
    said which platform it is for); a config without a platform is unpacked.
    """
    if unpack is not None:
        return unpack
    if not config.os or not config.architecture:
        return True
    return matcher.match(
        Platform(os=config.os, architecture=config.architecture, variant=config.variant)
    )


def _has(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class _Check:
    """One look at what a pull of ``ref`` would find; what it found, for the tracker."""

    def __init__(self, svc: ImageService, namespace: str, ref: Reference,
                 snapshotter: NamespacedSnapshots | None) -> None:
        self.svc = svc
        self.namespace = namespace
        self.ref = ref
        self.unpacker = (svc.unpacker(namespace, snapshotter) if snapshotter is not None
                         else None)
        #: Blobs found, in the order the full pull reports them.
        self.blobs: list[tuple[Descriptor, str]] = []
        #: Layers found unpacked: (layer, chain ID).
        self.layers: list[tuple[Descriptor, str]] = []

    async def blob(self, desc: Descriptor, kind: str) -> Mapping[str, str] | None:
        """The blob's labels if the namespace has it with its distribution source."""
        if desc.size <= 0:
            return None
        try:
            info = await self.svc.content.info(self.namespace, desc.digest)
        except NotFound:
            return None
        if source_labels(info.labels, self.ref.domain, self.ref.path):
            return None
        self.blobs.append((desc, kind))
        return info.labels

    async def document(self, desc: Descriptor, kind: str) -> tuple[bytes, Mapping[str, str]] | None:
        """A stored document that passes the pull's checks, with its labels."""
        labels = await self.blob(desc, kind)
        if labels is None:
            return None
        data = await self.svc.read(self.namespace, desc)
        if data is None:
            return None
        try:
            check_document(desc, data)
        except InvalidArgument:
            return None
        return data, labels

    async def root(self, root: Descriptor, fetch: Matcher | None,
                   unpack: Matcher) -> list[str] | None:
        """Top chain IDs of what the pull would unpack, or ``None`` if it has work to do."""
        if not is_index(root.mediaType):
            top = await self.manifest(root, None, unpack)
            return None if top is None else [top] if top else []
        found = await self.document(root, kind_of(root.mediaType))
        if found is None:
            return None
        index = decode_index(found[0], root.mediaType)
        children = select_manifests(index.manifests, fetch, limit=None if fetch is None else 1,
                                    accept=lambda d: not is_attestation(d))
        if (not children or any(is_index(c.mediaType) for c in children)
                or not _has(found[1], index_child_labels(children))):
            return None
        best = {d.digest for d in select_manifests(children, unpack, limit=1)}
        tops = []
        for child in children:
            top = await self.manifest(child, child.digest in best, unpack)
            if top is None:
                return None
            if top:
                tops.append(top)
        return tops

    async def manifest(self, desc: Descriptor, unpack: bool | None,
                       matcher: Matcher) -> str | None:
        """The manifest's top chain ID if unpacked ("" if not to unpack), ``None``: work."""
        found = await self.document(desc, kind_of(desc.mediaType))
        if found is None:
            return None
        manifest = decode_manifest(found[0], desc.mediaType)
        if not _has(found[1], manifest_child_labels(manifest)):
            return None
        config_found = await self.document(manifest.config, "config")
        if config_found is None:
            return None
        for layer in manifest.layers:
            if await self.blob(layer, "layer") is None:
                return None
        config = decode_config(config_found[0])
        if self.unpacker is None or not unpacks(unpack, config, matcher):
            return ""
        diff_ids = config.rootfs.diff_ids
        if not diff_ids or len(diff_ids) != len(manifest.layers):
            return None  # the full pull says what is wrong
        chains = chain_ids(diff_ids)
        # A layer's uncompressed label is not looked at: the full pull sets it only
        # when it applies the layer, never on a snapshot it finds.
        for layer, chain in zip(manifest.layers, chains, strict=True):
            if not await self.unpacker.exists(chain):
                return None
            self.layers.append((layer, chain))
        if config_found[1].get(LABEL_GC_REF_SNAPSHOT + self.unpacker.name) != chains[-1]:
            return None
        return chains[-1]


async def already_pulled(
    svc: ImageService,
    namespace: str,
    ref: Reference,
    root: Descriptor,
    *,
    fetch: Matcher | None,
    unpack: Matcher,
    snapshotter: NamespacedSnapshots | None,
    tracker: Tracker,
) -> Image | None:
    """The image record if pulling ``root`` as ``ref`` would change nothing, else ``None``.

    Args:
        svc: The images service.
        namespace: The pull's namespace.
        ref: The reference pulled (its name is the image record's).
        root: What it resolved to.
        fetch: The platforms fetched (``None``: all).
        unpack: The platforms unpacked.
        snapshotter: Where the pull unpacks (``None``: it does not).
        tracker: Told of every blob and unpacked layer found, once all are.
    """
    try:
        image = await svc.get(namespace, ref.name)
    except NotFound:
        return None
    if (image.target.digest, image.target.mediaType) != (root.digest, root.mediaType):
        return None
    check = _Check(svc, namespace, ref, snapshotter)
    try:
        tops = await check.root(root, fetch, unpack)
    except InvalidArgument:
        return None  # a document the decoders refuse: the full pull reports it
    if tops is None:
        return None
    if snapshotter is not None and tops and not _has(
            image.labels, {LABEL_SNAPSHOTTER + snapshotter.name: tops[0]}):
        return None
    for desc, kind in check.blobs:
        tracker.add(desc, kind)
    for desc, _ in check.blobs:
        tracker.status(desc.digest, BlobStatus.EXISTS)
    for layer, chain in check.layers:
        tracker.unpack(layer.digest, UnpackStatus.EXISTS, chain_id=chain)
    return image
