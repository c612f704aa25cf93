"""Registration of ``snapshotter.btrfs``: config in, :class:`BtrfsSnapshotter` out.

Listed in this distribution's ``pyproject.toml`` under the ``moorage.plugins``
entry-point group; the daemon imports this module and calls the hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread

from moorage_snapshotter_btrfs.snapshotter import BtrfsSnapshotter, check_supported
from runtime.core.config import AbsolutePath
from runtime.core.errors import NotImplementedYet
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration

__all__ = ["API_VERSION", "BtrfsConfig", "close", "init", "moorage_plugins"]

#: The Moorage plugin API this package was written against. A literal, not
#: ``runtime.core.registration.PLUGIN_API_VERSION``: it states what the code
#: was built for, so a core that moved on can refuse it.
API_VERSION = 1


class BtrfsConfig(PluginConfig):
    """``[plugins."snapshotter.btrfs"]``."""

    #: Where snapshots live, on a btrfs filesystem; empty means the plugin's
    #: own root directory (``<root>/snapshotter.btrfs``).
    root_path: AbsolutePath = ""
    #: Delete a removed snapshot's subvolume at once; false leaves it to cleanup.
    sync_remove: bool = True


async def init(ctx: InitContext[BtrfsConfig]) -> BtrfsSnapshotter:
    """Check that the root is on btrfs, then build the snapshotter.

    Raises:
        PluginSkipped: The root is not on btrfs, or btrfs-progs is missing.
    """
    root = Path(ctx.config.root_path) if ctx.config.root_path else ctx.root
    try:
        await anyio.to_thread.run_sync(check_supported, root)
    except NotImplementedYet as exc:
        raise PluginSkipped(exc.message) from exc
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return BtrfsSnapshotter(root, sync_remove=ctx.config.sync_remove)


async def close(snapshotter: BtrfsSnapshotter) -> None:
    """Close the snapshotter's database."""
    await snapshotter.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The btrfs snapshotter."""
    yield Registration(
        type="snapshotter",
        id="btrfs",
        init=init,
        close=close,
        config=BtrfsConfig,
        api_version=API_VERSION,
        description="snapshots as btrfs subvolumes (root must be on btrfs)",
    )
