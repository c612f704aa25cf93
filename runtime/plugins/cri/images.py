"""The CRI ImageService on Moorage's image store, in the CRI namespace.

A CRI image is identified by its config digest (``Image.id``, what
``PullImageResponse.image_ref`` and ``ContainerStatus.image_id`` return); the
image records (one per name) pointing at manifests with that config are its
tags and digests. ImageStatus and RemoveImage take an id, a name or a digest
reference alike.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re

import anyio
import msgspec

from runtime.api.specs import ImageConfig as RunConfig
from runtime.core.errors import DeadlineExceeded, InvalidArgument, MoorageError, NotFound
from runtime.pkg.registry.reference import parse_reference
from runtime.plugins.cri.messages import pb
from runtime.plugins.images.api import LABEL_SNAPSHOTTER, Image, Images, PullOptions
from runtime.plugins.snapshots.api import Kind

__all__ = ["CriImage", "CriImages"]

_ID = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
_LOOPBACK_HOSTS = ("localhost", "127.", "[::1]")


class CriImage(msgspec.Struct):
    """One CRI image: its config digest and every record naming it."""

    id: str
    records: list[Image]
    size: int
    user: str

    @property
    def name(self) -> str:
        """A record name to run it by (a tagged one first)."""
        tagged = [r.name for r in self.records if "@" not in r.name]
        return (tagged or [r.name for r in self.records])[0]

    def to_pb(self) -> pb.Image:
        """As the CRI's ``Image``."""
        tags, digests = [], []
        for record in self.records:
            ref = parse_reference(record.name)
            if ref.tag:
                tags.append(f"{ref.repository}:{ref.tag}")
            digest = f"{ref.repository}@{record.target.digest}"
            if digest not in digests:
                digests.append(digest)
        image = pb.Image(id=self.id, repo_tags=sorted(tags), repo_digests=sorted(digests),
                         size=self.size, spec=pb.ImageSpec(image=self.id))
        user = self.user.split(":", 1)[0]
        if user.isdigit():
            image.uid.value = int(user)
        elif user:
            image.username = user
        return image


class CriImages(msgspec.Struct):
    """ImageService calls, over the images service (``images.store``).

    Args:
        namespace: The CRI namespace.
        images: The image service.
        snapshotter: Where pulled images are unpacked (empty: the default).
    """

    namespace: str
    images: Images
    snapshotter: str = ""
    # A record's target is immutable, so its config digest is cached by target.
    _configs: dict[str, tuple[str, int, str]] = msgspec.field(default_factory=dict)
    # (record name, snapshotter) -> the record's target digest when image_rootfs ran, the
    # top chain ID and run config it gave: content-addressed, so valid for that target
    # while the snapshot exists. Keyed by name, so a moved tag replaces its entry.
    _rootfs: dict[tuple[str, str], tuple[str, str, RunConfig]] = msgspec.field(default_factory=dict)

    async def _describe(self, record: Image) -> tuple[str, int, str] | None:
        key = record.target.digest
        if key not in self._configs:
            try:
                _, manifest, config = await self.images.platform_manifest(self.namespace, record)
            except MoorageError:
                return None
            size = manifest.config.size + sum(layer.size for layer in manifest.layers)
            user = (config.config.user if config.config else "") or ""
            self._configs[key] = (manifest.config.digest, size, user)
        return self._configs[key]

    async def all(self) -> list[CriImage]:
        """Every image of the namespace, one per config digest, sorted by id."""
        grouped: dict[str, CriImage] = {}
        for record in await self.images.list(self.namespace):
            described = await self._describe(record)
            if described is None:
                continue
            id_, size, user = described
            if id_ in grouped:
                grouped[id_].records.append(record)
            else:
                grouped[id_] = CriImage(id=id_, records=[record], size=size, user=user)
        return [grouped[k] for k in sorted(grouped)]

    async def resolve(self, ref: str) -> CriImage | None:
        """The image an id, a name or a digest reference names; ``None`` if none."""
        text = ref.strip()
        if not text:
            raise InvalidArgument("image reference must not be empty")
        images = await self.all()
        if _ID.match(text):
            full = text if text.startswith("sha256:") else f"sha256:{text}"
            return next((i for i in images if i.id == full), None)
        try:
            parsed = parse_reference(text)
        except InvalidArgument:
            # A short id prefix, as crictl accepts.
            found = [i for i in images if i.id.removeprefix("sha256:").startswith(text)]
            return found[0] if len(found) == 1 else None
        for image in images:
            for record in image.records:
                if record.name == parsed.name:
                    return image
                if parsed.digest and not parsed.tag:
                    rec = parse_reference(record.name)
                    if (rec.repository == parsed.repository
                            and record.target.digest == parsed.digest):
                        return image
        return None

    async def verbose_info(self, image: CriImage) -> str:
        """The ``info`` entry of a verbose ImageStatus: the OCI image config, as containerd's."""
        _, _, config = await self.images.platform_manifest(self.namespace, image.records[0])
        return json.dumps({"imageSpec": msgspec.to_builtins(config)})

    async def rootfs(self, image: CriImage, snapshotter: str) -> tuple[str, RunConfig]:
        """The image's top chain ID in ``snapshotter`` (unpacking it if needed) and config.

        The image service walks the image's index, manifest and config in the
        content store each time; a CreateContainer per pod need not. What it
        found is kept by the record's name and target (a digest: the same target
        is the same manifest, config and layers), and used again while the
        chain's committed snapshot exists. A record re-tagged to another target
        or removed is never looked up here: :meth:`resolve` reads the records
        each call.
        """
        name = image.name
        record = next(r for r in image.records if r.name == name)
        key = (name, snapshotter)
        known = self._rootfs.get(key)
        # The record's label is what keeps the snapshot from the garbage collector: a
        # record made again under the same name and target lacks it until image_rootfs.
        if (known is not None and known[0] == record.target.digest
                and record.labels.get(LABEL_SNAPSHOTTER + snapshotter) == known[1]
                and await self._committed(known[1], snapshotter)):
            return known[1], known[2]
        chain, config = await self.images.image_rootfs(self.namespace, name, snapshotter)
        # The image service's config type and the runtime's spell the same OCI object.
        run_config = msgspec.convert(msgspec.to_builtins(config), RunConfig)
        self._rootfs[key] = (record.target.digest, chain, run_config)
        return chain, run_config

    async def _committed(self, chain: str, snapshotter: str) -> bool:
        try:
            info = await self.images.snapshotter(snapshotter).stat(self.namespace, chain)
        except NotFound:
            return False
        return info.kind == Kind.COMMITTED

    async def pull(self, request: pb.PullImageRequest, timeout: float | None) -> str:
        """PullImage; returns the image id. ``timeout``: the call's remaining deadline."""
        ref = parse_reference(request.image.image)
        opts = PullOptions(snapshotter=self.snapshotter)
        domain = ref.domain
        if domain.startswith(_LOOPBACK_HOSTS):
            # As containerd: a registry on the loopback is spoken to over HTTP.
            opts.plain_http = True
        auth = request.auth
        if auth.username:
            opts.username, opts.password = auth.username, auth.password
        elif auth.auth:
            try:
                user, _, password = base64.b64decode(auth.auth).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("auth is not base64 of user:password") from None
            opts.username, opts.password = user, password
        elif auth.identity_token or auth.registry_token:
            opts.password = auth.registry_token or auth.identity_token
        try:
            with anyio.fail_after(timeout):
                record = await self.images.pull(self.namespace, ref.name, opts)
        except TimeoutError:
            raise DeadlineExceeded(f"pulling {ref.name} did not finish in time") from None
        described = await self._describe(record)
        if described is None:
            raise NotFound(f"image {ref.name} has no manifest for this platform")
        return described[0]

    async def remove(self, ref: str) -> None:
        """RemoveImage: every record of the image; an unknown image is no error."""
        image = await self.resolve(ref)
        if image is None:
            return
        for record in image.records:
            with contextlib.suppress(NotFound):
                await self.images.delete(self.namespace, record.name)

    async def fs_info(self) -> pb.ImageFsInfoResponse:
        """ImageFsInfo: the snapshotter's directory and what the images' blobs take."""
        import os
        import time

        sn = self.images.snapshotter(self.snapshotter)
        root = sn.root
        used = inodes = 0
        for image in await self.all():
            used += image.size
        if root and os.path.isdir(root):
            st = os.statvfs(root)
            inodes = st.f_files - st.f_ffree
        usage = pb.FilesystemUsage(timestamp=time.time_ns())
        usage.fs_id.mountpoint = root
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        response = pb.ImageFsInfoResponse()
        response.image_filesystems.append(usage)
        response.container_filesystems.append(usage)
        return response
