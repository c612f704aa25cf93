"""Image documents: decode indexes, manifests and configs; walk them; label their children.

Everything here is pure (bytes in, records out) so pull, push, unpack, import
and export share one reading of the OCI and Docker schema 2 formats. Schema 1
is refused by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec

from runtime.core.errors import FailedPrecondition, InvalidArgument, NotImplementedYet
from runtime.pkg.registry.types import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_OCI_CONFIG,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
)
from runtime.plugins.images.api import LABEL_GC_REF_CONTENT, ImageConfig
from runtime.plugins.images.documents import check_document
from runtime.plugins.images.platforms import Matcher, select_manifests

__all__ = [
    "ConfigFile",
    "Index",
    "Manifest",
    "RootFS",
    "Walked",
    "chain_ids",
    "decode_config",
    "decode_index",
    "decode_manifest",
    "index_child_labels",
    "is_index",
    "is_manifest",
    "kind_of",
    "manifest_child_labels",
    "walk",
]

_CONFIG_TYPES = frozenset({MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})
# Entries of an index that are not images: BuildKit attestations.
_ATTESTATION_KEY = "vnd.docker.reference.type"


class Index(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An OCI image index or a Docker manifest list."""

    schemaVersion: int = 2
    mediaType: str = ""
    manifests: list[Descriptor] = []
    annotations: dict[str, str] = {}


class Manifest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An OCI image manifest or a Docker schema 2 manifest."""

    schemaVersion: int = 2
    mediaType: str = ""
    config: Descriptor
    layers: list[Descriptor] = []
    annotations: dict[str, str] = {}


class RootFS(msgspec.Struct, kw_only=True):
    """``rootfs`` of an image config: the uncompressed digests of the layers."""

    type: str = "layers"
    diff_ids: list[str] = []


class ConfigFile(msgspec.Struct, kw_only=True):
    """The parts of an image config this daemon reads."""

    architecture: str = ""
    os: str = ""
    variant: str = ""
    config: ImageConfig | None = None
    rootfs: RootFS = msgspec.field(default_factory=RootFS)


def is_index(media_type: str) -> bool:
    """Whether ``media_type`` is an index or manifest list."""
    return media_type in INDEX_MEDIA_TYPES


def is_manifest(media_type: str) -> bool:
    """Whether ``media_type`` is a single-platform manifest."""
    return media_type in MANIFEST_MEDIA_TYPES


def kind_of(media_type: str) -> str:
    """``index``, ``manifest``, ``config``, ``layer`` or ``unknown`` (ingest ref prefix)."""
    if is_index(media_type):
        return "index"
    if is_manifest(media_type):
        return "manifest"
    if media_type in _CONFIG_TYPES:
        return "config"
    if ".layer." in media_type or ".rootfs." in media_type:
        return "layer"
    return "unknown"


def _check_schema(media_type: str, data: bytes) -> None:
    if media_type in SCHEMA1_MEDIA_TYPES:
        raise NotImplementedYet(
            f"{media_type} (Docker schema 1) is not supported; push the image again with a "
            "current client to get a schema 2 or OCI manifest"
        )
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidArgument(f"{media_type} of {len(data)} bytes exceeds {MAX_MANIFEST_SIZE}")


def decode_index(data: bytes, media_type: str = "") -> Index:
    """Decode an index; InvalidArgument on malformed JSON or a non-index document."""
    return _decode(data, media_type, Index, is_index, "index", "an index")


def decode_manifest(data: bytes, media_type: str = "") -> Manifest:
    """Decode a manifest; InvalidArgument on malformed JSON or a non-manifest document."""
    return _decode(data, media_type, Manifest, is_manifest, "manifest", "a manifest")


_Document = TypeVar("_Document", Index, Manifest)


def _decode(data: bytes, media_type: str, type_: type[_Document], accepts: Callable[[str], bool],
            kind: str, a_kind: str) -> _Document:
    _check_schema(media_type, data)
    try:
        document = msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"invalid image {kind}: {exc}") from None
    if document.mediaType and not accepts(document.mediaType):
        raise InvalidArgument(f"document is a {document.mediaType}, not {a_kind}")
    return document


def decode_config(data: bytes) -> ConfigFile:
    """Decode an image config; InvalidArgument if it is not one."""
    try:
        return msgspec.json.decode(data, type=ConfigFile)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"invalid image config: {exc}") from None


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Chain IDs of a layer stack: ``c0 = d0``, ``ci = sha256(c(i-1) + " " + di)``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def index_child_labels(children: Sequence[Descriptor]) -> dict[str, str]:
    """GC labels of an index for the manifests kept from it (``...content.m.<i>``)."""
    return {f"{LABEL_GC_REF_CONTENT}.m.{i}": d.digest for i, d in enumerate(children)}


def manifest_child_labels(manifest: Manifest) -> dict[str, str]:
    """GC labels of a manifest: ``...content.config`` and ``...content.l.<i>``."""
    labels = {f"{LABEL_GC_REF_CONTENT}.config": manifest.config.digest}
    labels.update(
        {f"{LABEL_GC_REF_CONTENT}.l.{i}": d.digest for i, d in enumerate(manifest.layers)}
    )
    return labels


def is_attestation(desc: Descriptor) -> bool:
    """Whether an index entry is a BuildKit attestation manifest, not an image."""
    return _ATTESTATION_KEY in desc.annotations


class Walked(msgspec.Struct):
    """Everything reachable from a root, as :func:`walk` found it.

    Attributes:
        indexes: Index descriptors, parents before children.
        manifests: ``(descriptor, manifest)`` of every image manifest followed.
        missing: Digests that were wanted but are not present.
    """

    indexes: list[Descriptor] = msgspec.field(default_factory=list)
    manifests: list[tuple[Descriptor, Manifest]] = msgspec.field(default_factory=list)
    missing: list[str] = msgspec.field(default_factory=list)

    def blobs(self) -> list[Descriptor]:
        """Every descriptor reached: indexes, manifests, configs and layers, deduplicated."""
        seen: dict[str, Descriptor] = {}
        for d in self.indexes:
            seen.setdefault(d.digest, d)
        for d, m in self.manifests:
            seen.setdefault(d.digest, d)
            seen.setdefault(m.config.digest, m.config)
            for layer in m.layers:
                seen.setdefault(layer.digest, layer)
        return list(seen.values())


async def walk(
    root: Descriptor,
    read: Callable[[Descriptor], Awaitable[bytes | None]],
    matcher: Matcher | None,
    *,
    skip_missing: bool = False,
) -> Walked:
    """Follow an image from its root through indexes to its manifests.

    Args:
        root: The image's target.
        read: Returns a document's bytes, or ``None`` if it is not present.
        matcher: Which platforms to follow in indexes (``None``: all of them).
        skip_missing: Record absent manifests in ``missing`` instead of failing.

    Raises:
        FailedPrecondition: A needed document is absent (unless ``skip_missing``).
    """
    out = Walked()

    async def visit(desc: Descriptor) -> None:
        data = await read(desc)
        if data is None:
            if not skip_missing:
                raise FailedPrecondition(f"content {desc.digest} ({desc.mediaType}) is missing")
            out.missing.append(desc.digest)
            return
        check_document(desc, data)
        if is_index(desc.mediaType):
            out.indexes.append(desc)
            index = decode_index(data, desc.mediaType)
            for child in select_manifests(
                index.manifests, matcher, limit=None, accept=lambda d: not is_attestation(d)
            ):
                await visit(child)
        elif is_manifest(desc.mediaType) or desc.mediaType in SCHEMA1_MEDIA_TYPES:
            out.manifests.append((desc, decode_manifest(data, desc.mediaType)))
        else:
            raise InvalidArgument(f"{desc.digest}: unexpected media type {desc.mediaType!r}")

    await visit(root)
    return out


async def join(chunks: AsyncIterator[bytes]) -> bytes:
    """Concatenate an async stream of chunks (small documents only)."""
    return b"".join([chunk async for chunk in chunks])
