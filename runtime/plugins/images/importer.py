"""Import: OCI image layout tars and ``docker save`` tars into images.

With an ``index.json`` (OCI layout, also what Docker 25+ and skopeo write),
blobs are ingested under their names' digests (verified) and every index
entry becomes an image. Otherwise ``manifest.json`` (``docker save``) entries
get a synthesized Docker schema 2 manifest over their config and layer files.
Names come from ``io.containerd.image.name``, else
``org.opencontainers.image.ref.name`` (a full reference, or a tag appended to
``base_name``), else ``<base_name>@<digest>``; ``base_name`` defaults to
``import-<date>``, as with ``ctr import``. A gzip-compressed tar is inflated
first; the members are then read in place, by offset.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg.registry.reference import parse_reference
from runtime.pkg.registry.types import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    Descriptor,
    Platform,
)
from runtime.plugins.images.api import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    Image,
)
from runtime.plugins.images.documents import check_document
from runtime.plugins.images.manifests import (
    decode_config,
    decode_index,
    decode_manifest,
    index_child_labels,
    is_index,
    manifest_child_labels,
)
from runtime.plugins.images.platforms import select_manifests

if TYPE_CHECKING:
    from runtime.plugins.images.service import ImageService

__all__ = ["import_archive"]

log = logging.getLogger("moorage.images")

_CHUNK = 1 << 20
_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
_MAGIC = {b"\x1f\x8b\x08": ".gzip", b"\x28\xb5\x2f\xfd": ".zstd"}
_MAX_METADATA = 64 << 20  # index.json and manifest.json are read into memory


class _Archive(msgspec.Struct):
    """The members of an archive on disk: regular files by normalised path."""

    path: Path
    files: dict[str, tarfile.TarInfo] = msgspec.field(default_factory=dict)
    links: dict[str, str] = msgspec.field(default_factory=dict)

    def member(self, name: str) -> tarfile.TarInfo | None:
        name = _clean(name)
        for _ in range(16):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                return None
            name = self.links[name]
        return None

    def read(self, info: tarfile.TarInfo, offset: int = 0, size: int | None = None) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(info.offset_data + offset)
            return handle.read(info.size - offset if size is None else size)


def _clean(name: str) -> str:
    return os.path.normpath(name.lstrip("/")).removeprefix("./")


def _scan(path: Path) -> _Archive:
    archive = _Archive(path)
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                name = _clean(info.name)
                if info.isfile():
                    archive.files[name] = info
                elif info.issym():
                    archive.links[name] = _clean(os.path.join(os.path.dirname(name), info.linkname))
                elif info.islnk():
                    archive.links[name] = _clean(info.linkname)
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a valid image archive: {exc}") from None
    return archive


def _gunzip_if_needed(path: Path) -> Path:
    with open(path, "rb") as handle:
        if handle.read(3) != b"\x1f\x8b\x08":
            return path
    plain = path.with_name(path.name + ".tar")
    with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
    return plain


def _sha256_member(archive: _Archive, info: tarfile.TarInfo) -> str:
    hasher = hashlib.sha256()
    with open(archive.path, "rb") as handle:
        handle.seek(info.offset_data)
        remaining = info.size
        while remaining:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                raise InvalidArgument(f"archive member {info.name} is truncated")
            hasher.update(chunk)
            remaining -= len(chunk)
    return "sha256:" + hasher.hexdigest()


class _Importer:
    def __init__(
        self, svc: ImageService, namespace: str, archive: _Archive, lease: str, base_name: str
    ) -> None:
        self.svc = svc
        self.namespace = namespace
        self.archive = archive
        self.lease = lease
        self.base_name = base_name or f"import-{time.strftime('%Y-%m-%d')}"

    async def ingest(self, info: tarfile.TarInfo, digest: str | None = None) -> str:
        """Store one member as a blob (verified against ``digest`` when given)."""
        if digest is None:
            digest = await anyio.to_thread.run_sync(_sha256_member, self.archive, info)
        try:
            writer = await self.svc.content.open_writer(
                self.namespace,
                f"import-{digest}",
                total=info.size,
                expected=digest,
                lease=self.lease,
            )
        except AlreadyExists:
            return digest
        try:
            offset = writer.status().offset
            if offset > info.size:
                await writer.write(b"", 0)
                offset = 0
            while offset < info.size:
                chunk = await anyio.to_thread.run_sync(
                    self.archive.read, info, offset, min(_CHUNK, info.size - offset)
                )
                if not chunk:
                    raise InvalidArgument(f"archive member {info.name} is truncated")
                await writer.write(chunk)
                offset += len(chunk)
            await writer.commit(info.size, digest)
        except AlreadyExists:
            pass
        except BaseException:
            await writer.abort()
            raise
        return digest

    async def put_bytes(self, data: bytes, labels: dict[str, str]) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            writer = await self.svc.content.open_writer(
                self.namespace,
                f"import-{digest}",
                total=len(data),
                expected=digest,
                lease=self.lease,
            )
        except AlreadyExists:
            await self.svc.content.update_labels(self.namespace, digest, labels)
            return digest
        try:
            await writer.write(data, 0)
            await writer.commit(len(data), digest, labels)
        except AlreadyExists:
            await self.svc.content.update_labels(self.namespace, digest, labels)
        except BaseException:
            await writer.abort()
            raise
        return digest

    def name_for(self, annotations: dict[str, str], digest: str) -> str:
        full = annotations.get(ANNOTATION_IMAGE_NAME, "")
        if full:
            return parse_reference(full).name
        ref_name = annotations.get(ANNOTATION_REF_NAME, "")
        if ref_name and any(c in ref_name for c in "/:@"):
            return parse_reference(ref_name).name
        if ref_name:
            return parse_reference(f"{self.base_name}:{ref_name}").name
        return parse_reference(f"{self.base_name}@{digest}").name

    async def oci(self, index_info: tarfile.TarInfo) -> list[Image]:
        for name, info in self.archive.files.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "blobs":
                if parts[1] != "sha256":
                    raise InvalidArgument(f"archive blob {name}: only sha256 is supported")
                await self.ingest(info, f"sha256:{parts[2]}")
        raw = await anyio.to_thread.run_sync(self.archive.read, index_info)
        layout = Descriptor(mediaType=MEDIA_TYPE_OCI_INDEX, digest="", size=len(raw))
        check_document(layout, raw, name="index.json")
        index = decode_index(raw)
        images: list[Image] = []
        for desc in index.manifests:
            await self.label_children(desc)
            name = self.name_for(desc.annotations, desc.digest)
            target = Descriptor(
                mediaType=desc.mediaType,
                digest=desc.digest,
                size=desc.size,
                annotations=desc.annotations,
            )
            images.append(Image(name=name, target=target))
        return images

    async def label_children(self, desc: Descriptor) -> None:
        """Set the GC labels of an imported index or manifest (and its child indexes)."""
        data = await self.svc.read(self.namespace, desc)
        if data is None:
            raise FailedPrecondition(f"archive lacks blob {desc.digest} named in its index")
        check_document(desc, data)
        if is_index(desc.mediaType):
            children = select_manifests(decode_index(data, desc.mediaType).manifests, None)
            present = [c for c in children if await self.svc.read(self.namespace, c) is not None]
            await self.svc.content.update_labels(
                self.namespace, desc.digest, index_child_labels(present)
            )
            for child in present:
                await self.label_children(child)
        else:
            await self.svc.content.update_labels(
                self.namespace,
                desc.digest,
                manifest_child_labels(decode_manifest(data, desc.mediaType)),
            )

    async def docker(self, manifest_info: tarfile.TarInfo) -> list[Image]:
        raw = await anyio.to_thread.run_sync(self.archive.read, manifest_info)
        try:
            entries = json.loads(raw)
            if not isinstance(entries, list):
                raise ValueError("not a list")
        except ValueError as exc:
            raise InvalidArgument(f"manifest.json is not a docker save manifest: {exc}") from None
        images: list[Image] = []
        for entry in entries:
            images.extend(await self.docker_entry(entry))
        return images

    async def docker_entry(self, entry: dict[str, Any]) -> list[Image]:
        def member(path: Any) -> tarfile.TarInfo:
            info = self.archive.member(str(path))
            if info is None:
                raise InvalidArgument(f"manifest.json names {path!r}, which the archive lacks")
            return info

        config_info = member(entry.get("Config", ""))
        config_digest = await self.ingest(config_info)
        config_data = await anyio.to_thread.run_sync(self.archive.read, config_info)
        config = decode_config(config_data)
        layers: list[dict[str, Any]] = []
        for path in entry.get("Layers") or []:
            info = member(path)
            magic = await anyio.to_thread.run_sync(self.archive.read, info, 0, 4)
            suffix = next((s for m, s in _MAGIC.items() if magic.startswith(m)), "")
            layers.append(
                {
                    "mediaType": _DOCKER_LAYER + suffix,
                    "size": info.size,
                    "digest": await self.ingest(info),
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_DOCKER_CONFIG,
                "size": config_info.size,
                "digest": config_digest,
            },
            "layers": layers,
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        labels = manifest_child_labels(decode_manifest(data))
        digest = await self.put_bytes(data, labels)
        platform = (
            Platform(os=config.os, architecture=config.architecture, variant=config.variant)
            if config.os and config.architecture
            else None
        )
        target = Descriptor(
            mediaType=MEDIA_TYPE_DOCKER_MANIFEST, digest=digest, size=len(data), platform=platform
        )
        tags = [str(t) for t in entry.get("RepoTags") or []]
        names = [parse_reference(t).name for t in tags] or [
            parse_reference(f"{self.base_name}@{digest}").name
        ]
        return [Image(name=name, target=target) for name in names]


async def import_archive(
    svc: ImageService,
    namespace: str,
    path: Path,
    *,
    base_name: str = "",
    unpack: bool = True,
    snapshotter: str = "",
) -> list[Image]:
    """Import the images of the archive at ``path`` (an uncompressed or gzip tar).

    Returns:
        The images created or updated, in archive order.

    Raises:
        InvalidArgument: Not an OCI layout or ``docker save`` archive, or a blob
            whose bytes do not match its name.
        FailedPrecondition: The index names content the archive lacks.
    """
    if base_name:
        parse_reference(base_name)  # refuse a bad base name before any work
    plain = await anyio.to_thread.run_sync(_gunzip_if_needed, path)
    try:
        archive = await anyio.to_thread.run_sync(_scan, plain)
        lease = await svc.leases.create(
            namespace,
            labels={"moorage/operation": "import"},
            expire=timedelta(seconds=svc.config.lease_expire),
        )
        try:
            importer = _Importer(svc, namespace, archive, lease.id, base_name)
            index_info = archive.member("index.json")
            manifest_info = archive.member("manifest.json")
            for info in (index_info, manifest_info):
                if info is not None and info.size > _MAX_METADATA:
                    raise InvalidArgument(f"{info.name} of {info.size} bytes is too large")
            if index_info is not None:
                images = await importer.oci(index_info)
            elif manifest_info is not None:
                images = await importer.docker(manifest_info)
            else:
                raise InvalidArgument(
                    "not an image archive: it has neither index.json (OCI) nor manifest.json "
                    "(docker save)"
                )
            stored = [await svc.put_image(namespace, image) for image in images]
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(NotFound):
                await svc.leases.delete(namespace, lease.id)
    finally:
        if plain != path:
            plain.unlink(missing_ok=True)
    if unpack:
        for image in stored:
            try:
                await svc.image_rootfs(namespace, image.name, snapshotter)
            except (NotFound, FailedPrecondition) as exc:
                log.info("imported %s without unpacking it: %s", image.name, exc)
    return stored
