"""Registration of ``snapshotter.overlayfs``: config in, :class:`OverlaySnapshotter` out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import msgspec

from runtime.core.config import AbsolutePath
from runtime.core.errors import NotImplementedYet
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration
from runtime.plugins.snapshots.overlay.snapshotter import OverlaySnapshotter, check_supported


class OverlayConfig(PluginConfig):
    """``[plugins."snapshotter.overlayfs"]``."""

    #: Where snapshots live; empty means the plugin's own root directory.
    root_path: AbsolutePath = ""
    #: Extra overlay options for every overlay mount (e.g. ``"volatile"``).
    mount_options: list[str] = msgspec.field(default_factory=list)
    #: Delete data on remove; false leaves it to cleanup during GC (faster removes).
    sync_remove: bool = True


async def init(ctx: InitContext[OverlayConfig]) -> OverlaySnapshotter:
    """Check that overlay works on the root, then build the snapshotter.

    Raises:
        PluginSkipped: The root's filesystem cannot host overlay layers.
    """
    root = Path(ctx.config.root_path) if ctx.config.root_path else ctx.root
    try:
        await anyio.to_thread.run_sync(check_supported, root)
    except (NotImplementedYet, PermissionError) as exc:
        raise PluginSkipped(str(exc)) from exc
    return OverlaySnapshotter(
        root, mount_options=ctx.config.mount_options, sync_remove=ctx.config.sync_remove
    )


async def close(snapshotter: OverlaySnapshotter) -> None:
    """Close the snapshotter's database."""
    await snapshotter.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The overlayfs snapshotter."""
    yield Registration(
        type="snapshotter",
        id="overlayfs",
        init=init,
        close=close,
        config=OverlayConfig,
        description="layered snapshots on overlayfs (needs d_type)",
    )
