"""The btrfs snapshotter against the shared conformance suite, on a loop-mounted btrfs."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from moorage_snapshotter_btrfs import btrfs
from moorage_snapshotter_btrfs.snapshotter import BtrfsSnapshotter

from runtime.core.errors import AlreadyExists
from runtime.plugins.snapshots.api import Mount, Snapshotter
from runtime.testing.snapshotter import SnapshotterConformance

pytest_plugins = ["runtime.testing.snapshotter"]


def read_only(path: Path) -> bool:
    out = subprocess.run(
        ["btrfs", "property", "get", "-ts", str(path), "ro"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.strip() == "ro=true"


def delete_all(root: Path) -> None:
    """Give the session's filesystem its space back."""
    snapshots = root / "snapshots"
    if snapshots.is_dir():
        for entry in os.scandir(snapshots):
            btrfs.delete_tree(Path(entry.path))


@pytest.fixture
def root(btrfs_mount: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="sn-", dir=btrfs_mount))


async def make(root: Path, **kw: bool) -> AsyncIterator[BtrfsSnapshotter]:
    sn = BtrfsSnapshotter(root, **kw)
    yield sn
    await sn.close()
    delete_all(root)


@pytest.fixture
async def snapshotter(root: Path) -> AsyncIterator[Snapshotter]:
    async for sn in make(root):
        yield sn


@pytest.fixture
async def lazy_snapshotter(root: Path) -> AsyncIterator[BtrfsSnapshotter]:
    async for sn in make(root, sync_remove=False):
        yield sn


class TestBtrfs(SnapshotterConformance):
    pass


class TestBtrfsSpecifics:
    async def test_snapshots_are_subvolumes_mounted_by_bind(
        self, snapshotter: BtrfsSnapshotter
    ) -> None:
        """Active: writable subvolume; committed and view: read-only; mounts bind the subvolume."""
        fs = snapshotter.root / "snapshots"
        assert await snapshotter.prepare("a") == [
            Mount(type="bind", source=f"{fs}/1/fs", options=["rw", "rbind"])
        ]
        assert btrfs.is_subvolume(fs / "1" / "fs")
        assert not read_only(fs / "1" / "fs")
        (fs / "1" / "fs" / "file").write_text("base")
        await snapshotter.commit("base", "a")
        assert read_only(fs / "1" / "fs")
        assert await snapshotter.view("v", "base") == [
            Mount(type="bind", source=f"{fs}/2/fs", options=["ro", "rbind"])
        ]
        assert btrfs.is_subvolume(fs / "2" / "fs") and read_only(fs / "2" / "fs")
        await snapshotter.view("empty")
        assert read_only(fs / "3" / "fs")
        await snapshotter.prepare("b", "base")
        assert (fs / "4" / "fs" / "file").read_text() == "base"
        (fs / "4" / "fs" / "file").write_text("changed")
        assert (fs / "1" / "fs" / "file").read_text() == "base"

    async def test_failed_commit_leaves_the_active_snapshot_writable(
        self, snapshotter: BtrfsSnapshotter
    ) -> None:
        await snapshotter.prepare("a")
        await snapshotter.commit("taken", "a")
        await snapshotter.prepare("b")
        with pytest.raises(AlreadyExists):
            await snapshotter.commit("taken", "b")
        assert not read_only(snapshotter.root / "snapshots" / "2" / "fs")

    async def test_remove_deletes_read_only_subvolumes(self, snapshotter: BtrfsSnapshotter) -> None:
        await snapshotter.prepare("a")
        await snapshotter.commit("base", "a")
        await snapshotter.view("v", "base")
        await snapshotter.remove("v")
        await snapshotter.remove("base")
        assert os.listdir(snapshotter.root / "snapshots") == []

    async def test_cleanup_deletes_what_lazy_removal_left(
        self, lazy_snapshotter: BtrfsSnapshotter
    ) -> None:
        """With sync_remove off, remove leaves the subvolume; cleanup deletes it."""
        sn = lazy_snapshotter
        await sn.prepare("a")
        await sn.commit("base", "a")
        await sn.prepare("keep", "base")
        await sn.remove("keep")
        assert len(os.listdir(sn.root / "snapshots")) == 2
        await sn.cleanup()
        assert os.listdir(sn.root / "snapshots") == ["1"]
