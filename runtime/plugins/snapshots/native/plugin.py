"""Registration of ``snapshotter.native``: config in, :class:`NativeSnapshotter` out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from runtime.core.config import AbsolutePath
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.plugins.snapshots.api import Snapshotter
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter


class NativeConfig(PluginConfig):
    """``[plugins."snapshotter.native"]``."""

    #: Where snapshots live; empty means the plugin's own root directory.
    root_path: AbsolutePath = ""
    #: Delete data on remove; false leaves it to cleanup during GC (faster removes).
    sync_remove: bool = True


async def init(ctx: InitContext[NativeConfig]) -> Snapshotter:
    """Build the snapshotter; it works on any filesystem, so it never skips."""
    root = Path(ctx.config.root_path) if ctx.config.root_path else ctx.root
    return NativeSnapshotter(root, sync_remove=ctx.config.sync_remove)


async def close(snapshotter: NativeSnapshotter) -> None:
    """Close the snapshotter's database."""
    await snapshotter.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The native (copying) snapshotter."""
    yield Registration.named("snapshotter.native", init, close=close, config=NativeConfig,
                             description="full-copy snapshots with bind mounts; works anywhere")
