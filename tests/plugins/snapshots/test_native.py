"""The native (copying) snapshotter against the conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.core.registration import InitContext
from runtime.plugins.snapshots.api import Mount, Snapshotter
from runtime.plugins.snapshots.native import plugin
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.testing.snapshotter import SnapshotterConformance
from tests.fixtures.system import require_binary, require_root

pytest_plugins = ["runtime.testing.snapshotter"]


@pytest.fixture
async def snapshotter(tmp_path: Path) -> AsyncIterator[Snapshotter]:
    require_root()
    require_binary("cp")
    sn = NativeSnapshotter(tmp_path / "native")
    yield sn
    await sn.close()


class TestNative(SnapshotterConformance):
    pass


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestNativeSpecifics:
    async def test_every_snapshot_is_a_bind_of_its_own_copy(self, snapshotter: Snapshotter) -> None:
        assert isinstance(snapshotter, NativeSnapshotter)
        root = snapshotter.root / "snapshots"
        assert await snapshotter.prepare("a") == [
            Mount(type="bind", source=f"{root}/1/fs", options=["rw", "rbind"])
        ]
        (root / "1" / "fs" / "file").write_text("base")
        await snapshotter.commit("base", "a")
        assert await snapshotter.view("v", "base") == [
            Mount(type="bind", source=f"{root}/2/fs", options=["ro", "rbind"])
        ]
        await snapshotter.prepare("b", "base")
        (root / "3" / "fs" / "file").write_text("changed")
        assert (root / "1" / "fs" / "file").read_text() == "base"
        assert (root / "2" / "fs" / "file").read_text() == "base"

    def test_registration(self) -> None:
        [registration] = list(plugin.moorage_plugins())
        assert (registration.type, registration.id) == ("snapshotter", "native")
        assert registration.config is plugin.NativeConfig

    async def test_init_uses_the_plugin_root(self, tmp_path: Path) -> None:
        [registration] = list(plugin.moorage_plugins())
        ctx: InitContext[plugin.NativeConfig] = InitContext(
            registration=registration,
            config=plugin.NativeConfig(),
            root=tmp_path / "root",
            state=tmp_path / "state",
            daemon=None,  # type: ignore[arg-type]  # not used by this plugin
            plugins=None,  # type: ignore[arg-type]
            events=None,
        )
        sn = await registration.init(ctx)
        assert isinstance(sn, NativeSnapshotter)
        assert sn.root == tmp_path / "root"
        await sn.prepare("a")
        assert registration.close is not None
        await registration.close(sn)
        assert (tmp_path / "root" / "metadata.db").is_file()
