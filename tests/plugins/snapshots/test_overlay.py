"""The overlayfs snapshotter against the conformance suite, plus its own specifics."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.abc import TaskGroup

from runtime.core.errors import NotImplementedYet, Unavailable
from runtime.core.registration import InitContext, PluginSkipped, Registration
from runtime.pkg.mount import _compact_lowerdirs
from runtime.plugins.snapshots.api import Mount, Snapshotter
from runtime.plugins.snapshots.overlay import plugin
from runtime.plugins.snapshots.overlay.snapshotter import OverlaySnapshotter, check_supported
from runtime.testing.snapshotter import SnapshotterConformance
from tests.fixtures.system import require_root, unavailable

pytest_plugins = ["runtime.testing.snapshotter"]


@pytest.fixture
async def snapshotter(tmp_path: Path) -> AsyncIterator[Snapshotter]:
    require_root()
    root = tmp_path / "overlayfs"
    try:
        await anyio.to_thread.run_sync(check_supported, root)
    except NotImplementedYet as exc:
        unavailable(str(exc))
    sn = OverlaySnapshotter(root)
    yield sn
    await sn.close()


class TestOverlay(SnapshotterConformance):
    pass


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _paths(sn: OverlaySnapshotter, *ids: int) -> str:
    return ":".join(str(sn.root / "snapshots" / str(i) / "fs") for i in ids)


class TestOverlayMounts:
    async def test_mount_shapes_follow_containerd(self, snapshotter: Snapshotter) -> None:
        """Bind without parents, overlay with them, lowerdirs nearest first."""
        assert isinstance(snapshotter, OverlaySnapshotter)
        sn = snapshotter
        root = sn.root / "snapshots"
        [bind] = await sn.prepare("a")  # id 1
        assert bind == Mount(type="bind", source=f"{root}/1/fs", options=["rw", "rbind"])
        await sn.commit("l1", "a")
        await sn.prepare("b", "l1")  # id 2
        await sn.commit("l2", "b")
        [overlay] = await sn.prepare("c", "l2")  # id 3
        assert overlay.type == "overlay" and overlay.source == "overlay"
        assert overlay.options[-3:] == [
            f"workdir={root}/3/work",
            f"upperdir={root}/3/fs",
            f"lowerdir={_paths(sn, 2, 1)}",
        ]
        if Path("/sys/module/overlay/parameters/index").exists():
            assert "index=off" in overlay.options
        assert await sn.view("v1", "l1") == [
            Mount(type="bind", source=f"{root}/1/fs", options=["ro", "rbind"])
        ]
        [view] = await sn.view("v2", "l2")
        assert view.type == "overlay"
        assert "ro" in view.options and view.options[-1] == f"lowerdir={_paths(sn, 2, 1)}"
        assert not any(o.startswith(("upperdir=", "workdir=")) for o in view.options)
        assert await sn.view("v0") == [
            Mount(type="bind", source=f"{root}/6/fs", options=["ro", "rbind"])
        ]

    async def test_configured_mount_options_are_added(self, tmp_path: Path) -> None:
        sn = OverlaySnapshotter(tmp_path / "root", mount_options=["volatile"])
        try:
            await sn.prepare("a")
            await sn.commit("base", "a")
            [overlay] = await sn.prepare("b", "base")
            assert "volatile" in overlay.options
        finally:
            await sn.close()

    def test_long_lowerdir_is_made_relative_to_the_common_parent(self) -> None:
        lowers = [f"/var/lib/moorage/snapshots/{i}/fs" for i in (12, 11, 3)]
        data = ["index=off", "upperdir=/u", "lowerdir=" + ":".join(lowers)]
        assert _compact_lowerdirs(data) == (
            "/var/lib/moorage/snapshots",
            ["index=off", "upperdir=/u", "lowerdir=12/fs:11/fs:3/fs"],
        )
        assert _compact_lowerdirs(["lowerdir=/a/fs"]) is None  # one lower: nothing to gain
        assert _compact_lowerdirs(["lowerdir=/a:/b"]) is None  # common parent is "/"


class TestOverlayStorage:
    async def test_records_survive_reopening(self, snapshotter: Snapshotter) -> None:
        assert isinstance(snapshotter, OverlaySnapshotter)
        await snapshotter.prepare("a", labels={"k": "v"})
        await snapshotter.commit("base", "a")
        await snapshotter.prepare("b", "base")
        again = OverlaySnapshotter(snapshotter.root)
        try:
            assert {i.name for i in await again.walk()} == {"base", "b"}
            assert (await again.stat("b")).parent == "base"
            assert await again.mounts("b") == await snapshotter.mounts("b")
        finally:
            await again.close()

    async def test_cleanup_removes_unreferenced_directories(self, snapshotter: Snapshotter) -> None:
        """What a crash leaves (half-built, orphaned, half-removed dirs) goes; live data stays."""
        assert isinstance(snapshotter, OverlaySnapshotter)
        await snapshotter.prepare("a")
        snapshots = snapshotter.root / "snapshots"
        for leftover in ("new-0123abcd", "999", "rm-7-beef"):
            (snapshots / leftover / "fs").mkdir(parents=True)
        await snapshotter.cleanup()
        assert sorted(os.listdir(snapshots)) == ["1"]
        assert (snapshots / "1" / "fs").is_dir()

    async def test_orphan_with_a_reused_id_is_replaced(self, snapshotter: Snapshotter) -> None:
        """An id whose insert was rolled back by a crash may be handed out again."""
        assert isinstance(snapshotter, OverlaySnapshotter)
        stale = snapshotter.root / "snapshots" / "1" / "fs"
        stale.mkdir(parents=True)
        (stale / "stale").touch()
        await snapshotter.prepare("a")
        assert os.listdir(stale) == []

    async def test_async_remove_leaves_data_to_cleanup(self, tmp_path: Path) -> None:
        require_root()
        sn = OverlaySnapshotter(tmp_path / "root", sync_remove=False)
        try:
            await sn.prepare("a")
            await sn.remove("a")
            snapshots = sn.root / "snapshots"
            [trash] = os.listdir(snapshots)
            assert trash.startswith("rm-1-")
            await sn.cleanup()
            assert os.listdir(snapshots) == []
        finally:
            await sn.close()

    async def test_closed_snapshotter_is_unavailable(self, snapshotter: Snapshotter) -> None:
        await snapshotter.close()
        with pytest.raises(Unavailable):
            await snapshotter.stat("a")


class TestOverlayPlugin:
    def test_registration(self) -> None:
        [registration] = list(plugin.moorage_plugins())
        assert (registration.type, registration.id) == ("snapshotter", "overlayfs")
        assert registration.config is plugin.OverlayConfig
        assert plugin.OverlayConfig() == plugin.OverlayConfig(
            root_path="", mount_options=[], sync_remove=True
        )

    async def test_init_uses_the_plugin_root_and_config(self, tmp_path: Path) -> None:
        require_root()
        [registration] = list(plugin.moorage_plugins())
        config = plugin.OverlayConfig(mount_options=["volatile"], sync_remove=False)
        async with anyio.create_task_group() as tg:
            sn = await registration.init(_context(registration, config, tmp_path, tg))
        try:
            assert isinstance(sn, OverlaySnapshotter)
            assert sn.root == tmp_path / "root"
            await sn.prepare("a")
            await sn.commit("base", "a")
            assert "volatile" in (await sn.prepare("b", "base"))[0].options
        finally:
            assert registration.close is not None
            await registration.close(sn)

    async def test_init_honours_root_path(self, tmp_path: Path) -> None:
        require_root()
        [registration] = list(plugin.moorage_plugins())
        config = plugin.OverlayConfig(root_path=str(tmp_path / "elsewhere"))
        async with anyio.create_task_group() as tg:
            sn = await registration.init(_context(registration, config, tmp_path, tg))
        await sn.close()
        assert sn.root == tmp_path / "elsewhere"

    async def test_init_skips_where_overlay_does_not_work(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def unsupported(root: Path) -> None:
            raise NotImplementedYet(f"{root} does not support d_type, overlayfs needs it")

        monkeypatch.setattr(plugin, "probe_overlay", unsupported)
        [registration] = list(plugin.moorage_plugins())
        with pytest.raises(PluginSkipped, match="does not support d_type"):
            await registration.init(_context(registration, plugin.OverlayConfig(), tmp_path))

    async def test_the_probe_is_removed_after_the_start_and_then_remembered(
        self, tmp_path: Path
    ) -> None:
        """The init answers once overlay mounted; the unmount and removal come after it."""
        require_root()
        [registration] = list(plugin.moorage_plugins())
        root = tmp_path / "root"
        async with anyio.create_task_group() as tg:
            sn = await registration.init(_context(registration, plugin.OverlayConfig(),
                                                  tmp_path, tg))
            # Remembered only once the probe is gone: a kill meanwhile probes again.
            assert not (root / plugin.CHECK_CACHE).exists()
        assert list(root.glob("check-*")) == []
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if str(root / "check-") in line]
        assert plugin.remembered(root)
        await sn.close()
        # The next start on this root probes nothing and starts no removal.
        sn = await registration.init(_context(registration, plugin.OverlayConfig(), tmp_path))
        await sn.close()

    def test_probe_runs_once_per_kernel_and_filesystem(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        probes: list[Path] = []
        monkeypatch.setattr(plugin, "check_supported", probes.append)
        root = tmp_path / "root"
        plugin.check_supported_once(root)
        plugin.check_supported_once(root)
        assert probes == [root]
        # A new kernel (or filesystem) makes the remembered success stale.
        (root / plugin.CHECK_CACHE).write_text("0.0.0-other ext4 8:1\n")
        plugin.check_supported_once(root)
        assert probes == [root, root]

    def test_a_failed_probe_is_not_remembered(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def unsupported(root: Path) -> None:
            raise NotImplementedYet("no overlay here")

        monkeypatch.setattr(plugin, "check_supported", unsupported)
        with pytest.raises(NotImplementedYet):
            plugin.check_supported_once(tmp_path / "root")
        assert not (tmp_path / "root" / plugin.CHECK_CACHE).exists()


def _context(
    registration: Registration, config: plugin.OverlayConfig, tmp_path: Path,
    tg: TaskGroup | None = None,
) -> InitContext[plugin.OverlayConfig]:
    async def spawn(fn: Any, *args: Any, name: str) -> Any:
        assert tg is not None, "this init starts a task"
        return await tg.start(fn, *args, name=name)

    return InitContext(
        registration=registration,
        config=config,
        root=tmp_path / "root",
        state=tmp_path / "state",
        daemon=None,  # type: ignore[arg-type]  # not used by this plugin
        plugins=None,  # type: ignore[arg-type]
        events=None,
        _spawn=spawn,
    )
