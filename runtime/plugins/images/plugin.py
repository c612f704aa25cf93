"""Registration of ``images.store``: config in, :class:`~.service.ImageService` out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import anyio.to_thread
import msgspec

from runtime.core.config import AbsolutePath
from runtime.core.errors import InvalidArgument
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.pkg.registry.retry import RetryPolicy
from runtime.plugins.api.api import optional_service, required_services, route_set
from runtime.plugins.images.api import Images
from runtime.plugins.images.service import ImageService
from runtime.plugins.images.store import ImageStore
from runtime.plugins.metadata.api import Metadata


class ImagesConfig(PluginConfig):
    """``[plugins."images.store"]``."""

    #: Blobs downloaded at once per pull (containerd's ``max_concurrent_downloads``).
    max_concurrent_downloads: int = 3
    #: Snapshotter to unpack into when a request names none ("": the snapshot service's).
    snapshotter: str = "overlayfs"
    #: Directory of ``<host>/hosts.toml`` registry configurations ("" for none).
    hosts_dir: AbsolutePath = "/etc/moorage/certs.d"
    #: Docker ``config.json`` with registry credentials ("": ``$DOCKER_CONFIG`` or ``~/.docker``).
    docker_config: AbsolutePath = ""
    #: Layers applied at the same time, over all pulls (containerd's ``max_concurrent_unpacks``).
    max_concurrent_unpacks: int = 2
    #: Apply the layers of an image side by side, grafting each into its overlay snapshot
    #: once the layer below is committed. Pays off where creating files waits on the disk;
    #: where it costs kernel CPU instead (measured on small shared VMs) the contention makes
    #: it slower than applying layers one after the other, hence off by default.
    parallel_unpack: bool = False
    #: Seconds the lease of a pull or unpack protects its content if the daemon dies.
    lease_expire: float = 24 * 3600.0
    #: Seconds to connect to a registry host before trying the next one.
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    #: Seconds a registry may send nothing before its response counts as stalled.
    read_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: How a failing registry (5xx, 429, refused or cut connections) is tried again:
    #: ``attempts``, ``backoff``, ``max_backoff``, ``total`` and ``retry_after_cap``.
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)


def _remove_tree(path: Path) -> None:
    """``shutil.rmtree(path, ignore_errors=True)``; shutil imported only if there is a tree."""
    if os.path.lexists(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)


async def init(ctx: InitContext[ImagesConfig]) -> Images:
    """Wire the image store to metadata, content, snapshots and diff."""
    for key in ("max_concurrent_downloads", "max_concurrent_unpacks"):
        if getattr(ctx.config, key) < 1:
            raise InvalidArgument(f"{key} must be at least 1")
    # Staged layers and spooled uploads of a daemon that died are of no use now.
    await anyio.to_thread.run_sync(_remove_tree, ctx.root / "tmp")
    metadata: Metadata = ctx.get("metadata.sqlite")
    return ImageService(
        store=ImageStore(metadata.db, ctx.publish),
        content=ctx.get("content.local"),
        snapshots=ctx.get("service.snapshots"),
        diff=ctx.get("diff.walking"),
        leases=metadata.leases,
        config=ctx.config,
        publish=ctx.publish,
        # Under the plugin's root, which is normally on the snapshotters' file system:
        # staged layers reach their snapshots by rename.
        scratch=ctx.root / "tmp",
    )


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The image store."""
    yield Registration.named(
        "images.store", init, config=ImagesConfig,
        requires=("metadata.sqlite", "content.local", "service.snapshots", "diff.walking"),
        description="image records; pull, push, unpack, import and export")
    yield route_set(
        "images", ("images.store",), "images: pull, push, import, export",
        "runtime.plugins.images.routes:image_routes",
        lambda ctx: (*required_services(ctx), optional_service(ctx, "gc.scheduler")),
    )
