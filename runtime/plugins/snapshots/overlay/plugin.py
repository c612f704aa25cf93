"""Registration of ``snapshotter.overlayfs``: config in, :class:`OverlaySnapshotter` out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
from anyio.abc import TaskStatus

from runtime.core.config import AbsolutePath
from runtime.core.errors import NotImplementedYet
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration
from runtime.plugins.snapshots.api import Snapshotter
from runtime.plugins.snapshots.overlay.snapshotter import (
    OverlaySnapshotter,
    check_supported,
    probe_overlay,
    remove_probe,
)


class OverlayConfig(PluginConfig):
    """``[plugins."snapshotter.overlayfs"]``."""

    #: Where snapshots live; empty means the plugin's own root directory.
    root_path: AbsolutePath = ""
    #: Extra overlay options for every overlay mount (e.g. ``"volatile"``).
    mount_options: list[str] = msgspec.field(default_factory=list)
    #: Delete data on remove; false leaves it to cleanup during GC (faster removes).
    sync_remove: bool = True


#: Where a successful probe is remembered, under the snapshotter's root.
CHECK_CACHE = ".overlay-supported"


def _backing(root: Path) -> str:
    """What the probe's result depends on: kernel release, filesystem type and device."""
    dev = os.stat(root).st_dev
    fstype = "unknown"
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields, _, rest = line.partition(" - ")
            if fields.split()[2] == wanted:
                fstype = rest.split()[0]
    return f"{os.uname().release} {fstype} {wanted}\n"


def check_supported_once(root: Path) -> None:
    """:func:`check_supported`, skipped when it passed before on this kernel and filesystem.

    The probe (a real overlay mount) took most of the daemon's start. As
    containerd does with its overlay capability checks, a success is written
    down in the root, keyed by the kernel release and the root's filesystem
    type and device; a new kernel, or the root moved to another filesystem,
    probes again. A failure is never remembered.
    """
    if remembered(root):
        return
    check_supported(root)
    remember(root)


def remembered(root: Path) -> bool:
    """Whether a probe passed on ``root`` before, on this kernel and filesystem."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        return (root / CHECK_CACHE).read_text() == _backing(root)
    except OSError:
        return False


def remember(root: Path) -> None:
    """Write down that the probe passed on ``root`` (see :func:`check_supported_once`)."""
    cache = root / CHECK_CACHE
    # Not synced: losing it costs one more probe at the next start.
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(_backing(root))
    tmp.replace(cache)


async def _finish_probe(root: Path, probe: Path, *,
                        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Unmount and remove a probe that passed, then remember the success.

    Runs beside the rest of the start (the unmount and the removal took as
    long as the probe). Remembered only once the probe is gone: a daemon
    killed meanwhile probes again at its next start.
    """
    task_status.started()
    await anyio.to_thread.run_sync(remove_probe, probe)
    await anyio.to_thread.run_sync(remember, root)


async def init(ctx: InitContext[OverlayConfig]) -> Snapshotter:
    """Check that overlay works on the root, then build the snapshotter.

    Raises:
        PluginSkipped: The root's filesystem cannot host overlay layers.
    """
    root = Path(ctx.config.root_path) if ctx.config.root_path else ctx.root
    try:
        if not await anyio.to_thread.run_sync(remembered, root):
            # What the probe imports, imported here: imported by the worker thread
            # beside the other plugins' imports, a fresh root's start took 10 to
            # 20 ms longer (docs/performance.md, entry 32).
            import ctypes  # noqa: F401
            import tempfile  # noqa: F401

            probe = await anyio.to_thread.run_sync(probe_overlay, root)
            await ctx.start(_finish_probe, root, probe, name="snapshotter.overlayfs probe removal")
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
    yield Registration.named("snapshotter.overlayfs", init, close=close, config=OverlayConfig,
                             description="layered snapshots on overlayfs (needs d_type)")
