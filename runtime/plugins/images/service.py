"""The service of ``images.store``: records plus the operations that move image content.

:class:`ImageService` is what the API route set and other plugins hold. Record
operations go to :class:`~.store.ImageStore`; pull, push, unpack, import and
export live in their own modules and receive this service for its parts
(content, snapshots, diff, leases, the shared keyed locks).

Those modules, the registry client and the manifest walker are imported by
the first operation that needs them, not at start: an idle daemon keeps them
out of memory.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from runtime.core.errors import AlreadyExists, FailedPrecondition, MoorageError, NotFound
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.content.api import NamespacedContent
from runtime.plugins.diff.api import Applier, Stager
from runtime.plugins.images.api import (
    LABEL_SNAPSHOTTER,
    CheckResult,
    Image,
    ImageConfig,
    ImageUsage,
    PullOptions,
    PushOptions,
)
from runtime.plugins.images.errors import single_error
from runtime.plugins.images.store import ImageStore
from runtime.plugins.metadata.api import Leases, Publish, Resource
from runtime.plugins.snapshots.api import NamespacedSnapshots, Snapshots

if TYPE_CHECKING:
    from runtime.pkg.registry.client import RegistryClient
    from runtime.plugins.images.fetch import Keep
    from runtime.plugins.images.manifests import ConfigFile, Manifest, Walked
    from runtime.plugins.images.platforms import Matcher
    from runtime.plugins.images.plugin import ImagesConfig
    from runtime.plugins.images.progress import Tracker
    from runtime.plugins.images.unpack import Unpacker

__all__ = ["ImageService"]

log = logging.getLogger("moorage.images")


class ImageService:
    """Images of every namespace: records, pull, push, unpack, import, export.

    Args:
        store: The image records.
        content: The content service (``content.local``).
        snapshots: The snapshot service (``service.snapshots``).
        diff: The diff service (``diff.walking``).
        leases: The lease store of the metadata plugin.
        config: The plugin configuration.
        publish: ``publish(namespace, topic, event)`` on the event exchange.
        scratch: Directory for uploaded archives being imported.
    """

    def __init__(
        self,
        *,
        store: ImageStore,
        content: NamespacedContent,
        snapshots: Snapshots,
        diff: Applier,
        leases: Leases,
        config: ImagesConfig,
        publish: Publish | None = None,
        scratch: Path | None = None,
    ) -> None:
        from runtime.core.locks import KeyedLocks

        self.store = store
        self.content = content
        self.snapshots = snapshots
        self.diff = diff
        # Asked once: only a differ that can stage applies an image's layers side by side.
        self.stager: Stager | None = diff if isinstance(diff, Stager) else None
        self.leases = leases
        self.config = config
        self.publish = publish or (lambda namespace, topic, event: None)
        self._scratch = scratch
        self.locks = KeyedLocks()
        # Service-wide: concurrent pulls share the CPU that applying layers needs.
        self.unpacks = anyio.Semaphore(max(1, config.max_concurrent_unpacks))
        #: Per snapshotter, whether staged layers could be grafted into its mounts.
        self.grafts: dict[str, bool] = {}

    # -- records ----------------------------------------------------------------

    @property
    def scratch(self) -> Path:
        """Where uploads and staged layers go: the given directory, else the system's temporary one.

        Looked up at first use: ``tempfile`` is no import of the daemon's start.
        """
        if self._scratch is None:
            import tempfile

            self._scratch = Path(tempfile.gettempdir())
        return self._scratch

    async def list(self, namespace: str, filters: Sequence[str] = ()) -> list[Image]:
        """Images of the namespace matching any filter."""
        return await self.store.list(namespace, filters)

    async def get(self, namespace: str, name: str) -> Image:
        """One image, or NotFound."""
        return await self.store.get(namespace, name)

    async def create(self, namespace: str, image: Image) -> Image:
        """Record a new image (AlreadyExists if the name is taken)."""
        return await self.store.create(namespace, image)

    async def update(self, namespace: str, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        """Update an image's labels, target or annotations."""
        return await self.store.update(namespace, image, fieldpaths)

    async def delete(
        self, namespace: str, name: str, *, sync: bool = False, target: str = ""
    ) -> None:
        """Delete an image record.

        Args:
            namespace: The namespace.
            name: The image.
            sync: Wait for the garbage collection that frees its content. Accepted
                now so clients can ask for it; it takes effect once a GC plugin runs.
            target: Only delete if the image still points at this digest.
        """
        await self.store.delete(namespace, name, target=target)

    async def put_image(self, namespace: str, image: Image) -> Image:
        """Create ``image`` or point the existing record at its target.

        Only the labels given are set on an existing record; the others (a
        user's own) are kept.
        """
        try:
            return await self.store.create(namespace, image)
        except AlreadyExists:
            current = await self.store.get(namespace, image.name)
            same_target = (current.target.digest, current.target.mediaType) == (
                image.target.digest,
                image.target.mediaType,
            )
            if same_target and all(current.labels.get(k) == v for k, v in image.labels.items()):
                return current  # nothing changed: no write, no /images/update event
            paths = ("target", *(f"labels.{k}" for k in image.labels))
            return await self.store.update(namespace, image, paths)

    # -- parts for the operations ----------------------------------------------

    def snapshotter(self, name: str = "") -> NamespacedSnapshots:
        """The namespaced snapshotter ``name`` (default: configured, then the service's)."""
        return self.snapshots.get(name or self.config.snapshotter or None)

    def registry(
        self,
        *,
        plain_http: bool = False,
        hosts_dir: str = "",
        username: str = "",
        password: str = "",
    ) -> RegistryClient:
        """A registry client with the request's or the daemon's credentials."""
        from runtime.pkg.registry.auth import Credentials
        from runtime.pkg.registry.client import RegistryClient

        docker_config = Path(self.config.docker_config) if self.config.docker_config else None
        if username or password:
            credentials = Credentials(docker_config, username=username, password=password)
        else:
            credentials = Credentials(docker_config)
        directory = hosts_dir or self.config.hosts_dir
        return RegistryClient(
            hosts_dir=Path(directory) if directory else None,
            credentials=credentials,
            plain_http=plain_http,
            connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout,
            retry=self.config.retry,
        )

    def registry_for(self, opts: PullOptions | PushOptions) -> RegistryClient:
        """:meth:`registry` with a pull's or a push's registry access."""
        return self.registry(
            plain_http=opts.plain_http,
            hosts_dir=opts.hosts_dir,
            username=opts.username,
            password=opts.password,
        )

    def keeper(self, namespace: str, lease: str) -> Keep:
        """Adds existing objects to ``lease`` (they may be unreferenced leftovers)."""

        async def keep(resource_type: str, resource_id: str) -> None:
            await self.leases.add_resource(
                namespace, lease, Resource(type=resource_type, id=resource_id)
            )

        return keep

    def unpacker(
        self,
        namespace: str,
        snapshotter: NamespacedSnapshots,
        lease: str | None = None,
        tracker: Tracker | None = None,
    ) -> Unpacker:
        """An unpacker into ``snapshotter`` with the plugin's parallelism settings."""
        from runtime.plugins.images.unpack import Unpacker

        scratch = self.scratch / "unpack" if self.config.parallel_unpack else None
        keep = self.keeper(namespace, lease) if lease else None
        return Unpacker(
            namespace=namespace,
            snapshotter=snapshotter,
            diff=self.diff,
            stager=self.stager,
            content=self.content,
            locks=self.locks,
            lease=lease,
            tracker=tracker,
            scratch=scratch,
            parallel=self.unpacks,
            grafts=self.grafts,
            keep=keep,
        )

    async def read(self, namespace: str, desc: Descriptor) -> bytes | None:
        """A small document (index, manifest, config) from the content store, or ``None``."""
        from runtime.plugins.images.manifests import join

        try:
            return await join(await self.content.read(namespace, desc.digest))
        except NotFound:
            return None

    async def walk(
        self, namespace: str, image: Image, matcher: Matcher | None, *, skip_missing: bool = False
    ) -> Walked:
        """Everything of ``image`` reachable for ``matcher``'s platforms (``None``: all)."""
        from runtime.plugins.images.manifests import walk

        return await walk(
            image.target, lambda d: self.read(namespace, d), matcher, skip_missing=skip_missing
        )

    async def platform_manifest(
        self, namespace: str, image: Image, platform: str = ""
    ) -> tuple[Descriptor, Manifest, ConfigFile]:
        """The manifest of ``image`` for ``platform`` (default: the host's) and its config.

        Raises:
            NotFound: No manifest of the image fits the platform.
            FailedPrecondition: A document is missing from the content store.
        """
        from runtime.plugins.images.manifests import decode_config
        from runtime.plugins.images.platforms import matcher_for

        matcher = matcher_for([platform] if platform else [])
        walked = await self.walk(namespace, image, matcher, skip_missing=True)
        for desc, manifest in walked.manifests:
            data = await self.read(namespace, manifest.config)
            if data is None:
                raise FailedPrecondition(
                    f"image {image.name}: config {manifest.config.digest} is missing"
                )
            config = decode_config(data)
            if desc.platform is None and config.os and config.architecture:
                from runtime.pkg.registry.types import Platform

                found = Platform(
                    os=config.os, architecture=config.architecture, variant=config.variant
                )
                if not matcher.match(found):
                    continue
            return desc, manifest, config
        if walked.missing:
            raise FailedPrecondition(
                f"image {image.name}: manifest {walked.missing[0]} is "
                "missing from the content store"
            )
        raise NotFound(
            f"image {image.name} has no manifest for platform {platform or 'of this host'}"
        )

    # -- operations ---------------------------------------------------------------

    async def pull(
        self,
        namespace: str,
        reference: str,
        opts: PullOptions | None = None,
        tracker: Tracker | None = None,
    ) -> Image:
        """Pull (and unpack) an image; see :func:`runtime.plugins.images.pull.pull`."""
        from runtime.plugins.images.pull import pull

        with single_error():
            return await pull(self, namespace, reference, opts or PullOptions(), tracker)

    async def push(
        self,
        namespace: str,
        name: str,
        reference: str = "",
        opts: PushOptions | None = None,
        tracker: Tracker | None = None,
    ) -> Descriptor:
        """Push an image; see :func:`runtime.plugins.images.push.push`."""
        from runtime.plugins.images.push import push

        with single_error():
            return await push(
                self, namespace, name, reference or name, opts or PushOptions(), tracker
            )

    async def import_archive(
        self,
        namespace: str,
        path: Path,
        *,
        base_name: str = "",
        unpack: bool = True,
        snapshotter: str = "",
    ) -> builtins.list[Image]:
        """Import an OCI layout or ``docker save`` tar; see :mod:`.importer`."""
        from runtime.plugins.images.importer import import_archive

        return await import_archive(
            self, namespace, path, base_name=base_name, unpack=unpack, snapshotter=snapshotter
        )

    async def import_stream(
        self,
        namespace: str,
        chunks: AsyncIterable[bytes],
        *,
        base_name: str = "",
        unpack: bool = True,
        snapshotter: str = "",
    ) -> builtins.list[Image]:
        """Import an archive arriving as a stream (an upload): spooled to disk first."""
        import tempfile

        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="import-", suffix=".tar", dir=self.scratch)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                async for chunk in chunks:
                    await anyio.to_thread.run_sync(handle.write, chunk)
            return await self.import_archive(
                namespace, path, base_name=base_name, unpack=unpack, snapshotter=snapshotter
            )
        finally:
            path.unlink(missing_ok=True)

    async def export_archive(
        self,
        namespace: str,
        names: Sequence[str],
        *,
        platforms: Sequence[str] = (),
        all_platforms: bool = False,
    ) -> AsyncIterator[bytes]:
        """Plan an export (errors surface here) and return the tar stream; see :mod:`.export`."""
        from runtime.plugins.images.export import plan_export

        plan = await plan_export(
            self, namespace, names, platforms=platforms, all_platforms=all_platforms
        )
        return plan.chunks()

    async def unpack(
        self, namespace: str, name: str, snapshotter: str = "", platform: str = ""
    ) -> str:
        """Unpack an image already in the content store; return its top chain ID."""
        chain, _ = await self.image_rootfs(namespace, name, snapshotter, platform=platform)
        return chain

    async def image_rootfs(
        self, namespace: str, name: str, snapshotter: str = "", *, platform: str = ""
    ) -> tuple[str, ImageConfig]:
        """The top chain ID of ``name`` in ``snapshotter`` and how to run the image.

        Unpacks the image first if needed (from the content store: pull it
        first if blobs are missing). Prepare a container's snapshot with the
        chain ID as parent.

        Raises:
            NotFound: No such image, or no manifest for the platform.
            FailedPrecondition: Blobs are missing, or a layer does not match the config.
        """
        from runtime.plugins.images.manifests import chain_ids

        image = await self.get(namespace, name)
        sn = self.snapshotter(snapshotter)
        _, manifest, config = await self.platform_manifest(namespace, image, platform)
        chains = chain_ids(config.rootfs.diff_ids)
        if not chains:
            raise FailedPrecondition(f"image {name} has no layers")
        top = chains[-1]
        if not await self.unpacker(namespace, sn).exists(top):
            lease = await self.leases.create(
                namespace,
                labels={"moorage/operation": "unpack"},
                expire=timedelta(seconds=self.config.lease_expire),
            )
            unpacker = self.unpacker(namespace, sn, lease.id)
            try:
                for layer in manifest.layers:
                    try:
                        await self.content.info(namespace, layer.digest)
                    except NotFound:
                        raise FailedPrecondition(
                            f"image {name}: layer {layer.digest} is not in the content "
                            "store; pull the image again"
                        ) from None
                top = await unpacker.unpack(manifest, manifest.config, config)
            finally:
                with contextlib.suppress(MoorageError):
                    await self.leases.delete(namespace, lease.id)
        if image.labels.get(LABEL_SNAPSHOTTER + sn.name) != top:
            await self.store.set_labels(namespace, name, {LABEL_SNAPSHOTTER + sn.name: top})
        return top, config.config or ImageConfig()

    async def check(self, namespace: str, name: str, platforms: Sequence[str] = ()) -> CheckResult:
        """Whether every blob the image needs (for ``platforms``; default all) is present."""
        from runtime.plugins.images.platforms import matcher_for

        image = await self.get(namespace, name)
        matcher = matcher_for(platforms) if platforms else None
        walked = await self.walk(namespace, image, matcher, skip_missing=True)
        missing = list(walked.missing)
        present = size = 0
        blobs = walked.blobs()
        for desc in blobs:
            try:
                size += (await self.content.info(namespace, desc.digest)).size
                present += 1
            except NotFound:
                missing.append(desc.digest)
        unpacked = {
            k.removeprefix(LABEL_SNAPSHOTTER): v
            for k, v in image.labels.items()
            if k.startswith(LABEL_SNAPSHOTTER)
        }
        return CheckResult(
            name=name,
            complete=not missing,
            present=present,
            total=len(blobs) + len(walked.missing),
            missing=missing,
            size=size,
            unpacked=unpacked,
        )

    async def usage(self, namespace: str, name: str, snapshotter: str = "") -> ImageUsage:
        """Bytes of the image's blobs and of its unpacked snapshots in ``snapshotter``."""
        from runtime.plugins.images.manifests import chain_ids

        image = await self.get(namespace, name)
        walked = await self.walk(namespace, image, None, skip_missing=True)
        content_size = blobs = 0
        for desc in walked.blobs():
            with contextlib.suppress(NotFound):
                content_size += (await self.content.info(namespace, desc.digest)).size
                blobs += 1
        sn = self.snapshotter(snapshotter)
        snapshot_size = snapshots = 0
        try:
            _, _, config = await self.platform_manifest(namespace, image)
        except (NotFound, FailedPrecondition):
            config = None
        for chain in chain_ids(config.rootfs.diff_ids) if config else []:
            try:
                snapshot_size += (await sn.usage(namespace, chain)).size
                snapshots += 1
            except NotFound:
                break
        return ImageUsage(
            name=name,
            content_size=content_size,
            blobs=blobs,
            snapshotter=sn.name,
            snapshot_size=snapshot_size,
            snapshots=snapshots,
        )
