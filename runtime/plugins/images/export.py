"""Export: images as an OCI image layout tar, which ``skopeo`` and ``docker load`` read.

Written as containerd's exporter does::

    oci-layout                  {"imageLayoutVersion": "1.0.0"}
    blobs/sha256/<hex>          every blob of the images (for the platforms asked)
    index.json                  one entry per image name, annotated with
                                io.containerd.image.name (the full name) and
                                org.opencontainers.image.ref.name (the tag)
    manifest.json               Docker's format: Config, RepoTags, Layers

The plan (which blobs, the two JSON files) is made and checked before the
first byte is streamed, so a missing blob is an ordinary error response.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.core.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg.registry.reference import DEFAULT_DOMAIN, parse_reference
from runtime.pkg.registry.types import (
    MEDIA_TYPE_OCI_INDEX,
    Descriptor,
)
from runtime.plugins.images.api import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
)
from runtime.plugins.images.platforms import matcher_for

if TYPE_CHECKING:
    from runtime.plugins.images.service import ImageService

__all__ = ["ExportPlan", "plan_export"]

log = logging.getLogger("moorage.images")

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_MTIME = 0  # fixed, so the same images always export to the same bytes
_OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def _familiar(name: str) -> str:
    """Docker's short form: ``docker.io/library/busybox:latest`` → ``busybox:latest``."""
    ref = parse_reference(name)
    if not ref.tag:
        return ""
    path = ref.path.removeprefix("library/") if ref.domain == DEFAULT_DOMAIN else ref.path
    repo = path if ref.domain == DEFAULT_DOMAIN else f"{ref.domain}/{path}"
    return f"{repo}:{ref.tag}"


def _header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o444
    info.mtime = _MTIME
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


class ExportPlan(msgspec.Struct):
    """What an export will write; built (and checked) before the first byte is sent."""

    svc: ImageService
    namespace: str
    blobs: list[Descriptor] = msgspec.field(default_factory=list)
    index: bytes = b""
    docker_manifest: bytes = b""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The tar archive, in pieces of about a MiB."""
        written = 0
        for piece in (
            _header("oci-layout", len(_OCI_LAYOUT)),
            _OCI_LAYOUT,
            _padding(len(_OCI_LAYOUT)),
            _header("blobs/", 0, directory=True),
            _header("blobs/sha256/", 0, directory=True),
        ):
            written += len(piece)
            yield piece
        for desc in self.blobs:
            head = _header(f"blobs/sha256/{desc.digest.removeprefix('sha256:')}", desc.size)
            written += len(head)
            yield head
            size = 0
            async for chunk in await self.svc.content.read(self.namespace, desc.digest):
                size += len(chunk)
                written += len(chunk)
                yield chunk
            if size != desc.size:
                raise FailedPrecondition(f"blob {desc.digest} changed size during export")
            written += len(_padding(size))
            yield _padding(size)
        for name, data in (("index.json", self.index), ("manifest.json", self.docker_manifest)):
            piece = _header(name, len(data)) + data + _padding(len(data))
            written += len(piece)
            yield piece
        # End of archive: two zero blocks, then padding to a whole record, as tar writes.
        end = 2 * _BLOCK
        end += -(written + end) % _RECORD
        yield b"\0" * end


async def plan_export(
    svc: ImageService,
    namespace: str,
    names: Sequence[str],
    *,
    platforms: Sequence[str] = (),
    all_platforms: bool = False,
) -> ExportPlan:
    """Collect the images' blobs and build ``index.json`` and ``manifest.json``.

    Platforms: everything present by default; only ``platforms`` if given; every
    platform of an index (failing when one is missing) with ``all_platforms``.

    Raises:
        NotFound: An image does not exist.
        FailedPrecondition: A blob the export needs is missing.
        InvalidArgument: No image named.
    """
    if not names:
        raise InvalidArgument("name at least one image to export")
    matcher = matcher_for(platforms) if platforms and not all_platforms else None
    plan = ExportPlan(svc, namespace)
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    docker: dict[str, dict[str, Any]] = {}
    for name in names:
        image = await svc.get(namespace, parse_reference(name).name)
        walked = await svc.walk(namespace, image, matcher, skip_missing=not all_platforms)
        for desc in walked.blobs():
            if desc.digest in seen:
                continue
            try:
                await svc.content.info(namespace, desc.digest)
            except NotFound:
                raise FailedPrecondition(
                    f"cannot export {image.name}: blob {desc.digest} is missing"
                ) from None
            seen.add(desc.digest)
            plan.blobs.append(desc)
        if image.target.digest not in seen:
            plan.blobs.append(image.target)
            seen.add(image.target.digest)
        ref = parse_reference(image.name)
        annotations = {
            **image.target.annotations,
            ANNOTATION_IMAGE_NAME: image.name,
            ANNOTATION_REF_NAME: ref.tag or ref.digest,
        }
        entry = msgspec.to_builtins(msgspec.structs.replace(image.target, annotations=annotations))
        entries.append(entry)
        if walked.manifests:
            _, manifest = walked.manifests[0]
            record = docker.setdefault(
                manifest.config.digest,
                {
                    "Config": f"blobs/sha256/{manifest.config.digest.removeprefix('sha256:')}",
                    "RepoTags": [],
                    "Layers": [
                        f"blobs/sha256/{layer.digest.removeprefix('sha256:')}"
                        for layer in manifest.layers
                    ],
                },
            )
            tag = _familiar(image.name)
            if tag and tag not in record["RepoTags"]:
                record["RepoTags"].append(tag)
    plan.index = json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": entries},
        separators=(",", ":"),
    ).encode()
    plan.docker_manifest = json.dumps(list(docker.values()), separators=(",", ":")).encode()
    return plan
