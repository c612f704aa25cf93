"""Registration of ``diff.walking``: apply layer blobs onto snapshot mounts, and compare two.

The service picks the cheapest way to reach the snapshot's files:

* one ``overlay`` mount: write straight into its ``upperdir`` with overlayfs
  whiteouts (containerd's fast path; nothing is mounted);
* one read-write ``bind`` mount: write into its source directory;
* anything else: mount under ``<root>/tmpmounts``, apply, unmount.

Comparing reads one ``overlay`` mount's upperdir directly (every entry there is
a change); other mounts are mounted under ``<root>/tmpmounts`` and walked side
by side. Applying and comparing are blocking work (decompression, hashing,
file system calls) and run in a worker thread.

The appliers (:mod:`.apply`, :mod:`.staging`, with ``tarfile`` and ISA-L) are
imported by the first layer applied: an idle daemon keeps them out of memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio.to_thread

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.pkg.mount import mount_all, unmount
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.diff.api import ApplyResult, LayerDiff, StagingApplier
from runtime.plugins.diff.api import StagedLayer as Staged
from runtime.plugins.snapshots.api import Mount

if TYPE_CHECKING:
    from runtime.plugins.diff.walking.staging import StagedLayer

__all__ = ["WalkingConfig", "WalkingDiff"]


class WalkingConfig(PluginConfig):
    """``[plugins."diff.walking"]``."""

    #: Refuse layers that decompress to more than this many bytes (0: no limit).
    max_uncompressed: int = 0


def _own(staged: Staged) -> StagedLayer:
    """The contract hands back what :meth:`WalkingDiff.stage` made; anything else is a bug."""
    from runtime.plugins.diff.walking.staging import StagedLayer

    if not isinstance(staged, StagedLayer):
        raise TypeError(f"not a layer staged by diff.walking: {staged!r}")
    return staged


def _option(mount: Mount, key: str) -> str | None:
    prefix = key + "="
    return next((o[len(prefix) :] for o in mount.options if o.startswith(prefix)), None)


class WalkingDiff:
    """Applies layers to the mounts of a snapshot.

    Args:
        tmp_root: Where temporary mount points are made.
        max_uncompressed: Per-layer limit on uncompressed bytes (``None``: none).
    """

    def __init__(self, tmp_root: Path, max_uncompressed: int | None = None) -> None:
        self.tmp_root = tmp_root
        self.max_uncompressed = max_uncompressed

    async def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], reader: Callable[[], BinaryIO]
    ) -> ApplyResult:
        """Apply the layer ``desc`` (read through ``reader()``) onto ``mounts``.

        Args:
            desc: The layer's descriptor; its media type selects decompression.
            mounts: The mounts of an active snapshot, as its snapshotter gave them.
            reader: Opens the blob (called in the worker thread).

        Returns:
            The diffID and size of the uncompressed layer.

        Raises:
            NotImplementedYet: A media type this differ does not handle.
            InvalidArgument: A corrupt or hostile layer.
        """
        return await anyio.to_thread.run_sync(self._apply, desc.mediaType, list(mounts), reader)

    def _apply(
        self, media_type: str, mounts: list[Mount], reader: Callable[[], BinaryIO]
    ) -> ApplyResult:
        from runtime.plugins.diff.walking.apply import apply_layer

        with reader() as stream, self._target(mounts) as (target, upper):
            return apply_layer(
                stream,
                target,
                media_type=media_type,
                overlay_upper=upper,
                max_uncompressed=self.max_uncompressed,
            )

    async def stage(
        self, desc: Descriptor, reader: Callable[[], BinaryIO], scratch: Path
    ) -> StagedLayer:
        """Apply a layer into a new directory under ``scratch``, for :meth:`graft` later.

        Lets an unpacker apply the layers of an image side by side; see
        :mod:`.staging`. ``scratch`` should be on the snapshotter's file system.
        """
        from runtime.plugins.diff.walking import staging

        def work() -> StagedLayer:
            with reader() as stream:
                return staging.stage(
                    stream,
                    scratch,
                    media_type=desc.mediaType,
                    max_uncompressed=self.max_uncompressed,
                )

        return await anyio.to_thread.run_sync(work)

    async def graft(self, staged: Staged, mounts: Sequence[Mount]) -> bool:
        """Move a staged layer into the snapshot of ``mounts`` if it is one overlay mount.

        Returns:
            ``False`` (nothing changed) when the mounts are not a single overlay
            mount, or its upperdir cannot take the layer by renames: apply instead.
        """
        if len(mounts) != 1 or mounts[0].type != "overlay" or os.geteuid() != 0:
            return False
        upperdir = _option(mounts[0], "upperdir")
        if upperdir is None:
            return False
        from runtime.plugins.diff.walking import staging

        return await anyio.to_thread.run_sync(staging.graft, _own(staged), Path(upperdir))

    async def discard(self, staged: Staged) -> None:
        """Remove a staged layer that will not be grafted."""
        from runtime.plugins.diff.walking import staging

        await anyio.to_thread.run_sync(staging.discard, _own(staged))

    async def compare(self, lower: Sequence[Mount], upper: Sequence[Mount], out: BinaryIO,
                      *, compression: str = "gzip") -> LayerDiff:
        """Write the layer from ``lower`` to ``upper`` (see :class:`~..api.Comparer`)."""
        return await anyio.to_thread.run_sync(self._compare, list(lower), list(upper), out,
                                              compression)

    def _compare(self, lower: list[Mount], upper: list[Mount], out: BinaryIO,
                 compression: str) -> LayerDiff:
        from runtime.plugins.diff.walking.compare import write_diff, write_diff_from_overlay_upper

        if len(upper) == 1 and upper[0].type == "overlay":
            upperdir = _option(upper[0], "upperdir")
            lowerdirs = _option(upper[0], "lowerdir")
            if upperdir is not None:
                lowers = [Path(p) for p in lowerdirs.split(":")] if lowerdirs else []
                done = write_diff_from_overlay_upper(Path(upperdir), lowers, out,
                                                     compression=compression)
                return LayerDiff(done.diff_id, done.digest, done.size, done.media_type)
        with self._mounted(lower) as lower_dir, self._mounted(upper) as upper_dir:
            done = write_diff(lower_dir, upper_dir, out, compression=compression)
        return LayerDiff(done.diff_id, done.digest, done.size, done.media_type)

    @contextmanager
    def _mounted(self, mounts: list[Mount]) -> Iterator[Path]:
        """The mounts' tree at a temporary directory (empty for no mounts)."""
        import tempfile  # (with random and its hashing) by the first diff, not at start

        self.tmp_root.mkdir(parents=True, exist_ok=True)
        where = Path(tempfile.mkdtemp(prefix="compare-", dir=self.tmp_root))
        try:
            if not mounts:
                yield where
                return
            mount_all(mounts, where)
            try:
                yield where
            finally:
                unmount(where)
        finally:
            os.rmdir(where)

    @contextmanager
    def _target(self, mounts: list[Mount]) -> Iterator[tuple[Path, bool]]:
        """Yield ``(directory to apply into, is an overlay upperdir)``."""
        if len(mounts) == 1:
            mount = mounts[0]
            upperdir = _option(mount, "upperdir") if mount.type == "overlay" else None
            # Whiteouts are character devices: only root may make them.
            if upperdir is not None and os.geteuid() == 0:
                yield Path(upperdir), True
                return
            if mount.type == "bind" and "ro" not in mount.options:
                yield Path(mount.source), False
                return
        import tempfile

        self.tmp_root.mkdir(parents=True, exist_ok=True)
        where = Path(tempfile.mkdtemp(prefix="apply-", dir=self.tmp_root))
        try:
            mount_all(mounts, where)
            try:
                yield where, False
            finally:
                unmount(where)
        finally:
            os.rmdir(where)


async def init(ctx: InitContext[WalkingConfig]) -> StagingApplier:
    """The differ, with temporary mounts under the plugin's state directory."""
    limit = ctx.config.max_uncompressed or None
    return WalkingDiff(ctx.state / "tmpmounts", limit)


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The walking differ."""
    yield Registration.named("diff.walking", init, config=WalkingConfig,
                             description="apply layers onto snapshots, compare two "
                                         "(overlay upperdir fast path)")
