"""The registration ``snapshotter.btrfs``: what it declares, and when it skips."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from moorage_snapshotter_btrfs import btrfs, plugin
from moorage_snapshotter_btrfs.snapshotter import BtrfsSnapshotter
from moorage_snapshotter_btrfs.testing import unavailable

from runtime.core.registration import InitContext, PluginSkipped, Registration


def registration() -> Registration:
    [reg] = list(plugin.moorage_plugins())
    return reg


def context(tmp_path: Path, config: plugin.BtrfsConfig) -> InitContext[plugin.BtrfsConfig]:
    return InitContext(
        registration=registration(),
        config=config,
        root=tmp_path / "plugin-root",
        state=tmp_path / "state",
        daemon=None,  # type: ignore[arg-type]  # not used by this plugin
        plugins=None,  # type: ignore[arg-type]
        events=None,
    )


def test_registration_declares_type_id_config_and_api_version() -> None:
    reg = registration()
    assert (reg.name, reg.config, reg.api_version) == ("snapshotter.btrfs", plugin.BtrfsConfig, 1)
    assert reg.close is plugin.close


def test_distribution_lists_the_entry_point() -> None:
    dist = metadata.distribution("moorage-snapshotter-btrfs")
    [ep] = [ep for ep in dist.entry_points if ep.group == "moorage.plugins"]
    assert (ep.name, ep.value) == ("btrfs", "moorage_snapshotter_btrfs.plugin")


async def test_init_skips_when_the_root_is_not_on_btrfs(tmp_path: Path) -> None:
    """The skip reason names the root and the filesystem found; nothing is created."""
    found = btrfs.filesystem_type(tmp_path)
    if found == "btrfs":
        unavailable("the test directory itself is on btrfs")
    root = tmp_path / "not" / "yet"
    with pytest.raises(PluginSkipped) as caught:
        await registration().init(context(tmp_path, plugin.BtrfsConfig(root_path=str(root))))
    assert caught.value.reason == f"{root} is not on btrfs (found {found})"
    assert not (tmp_path / "not").exists()


async def test_init_skips_on_the_default_root_when_it_is_not_on_btrfs(tmp_path: Path) -> None:
    found = btrfs.filesystem_type(tmp_path)
    if found == "btrfs":
        unavailable("the test directory itself is on btrfs")
    with pytest.raises(PluginSkipped, match=r"plugin-root is not on btrfs \(found "):
        await registration().init(context(tmp_path, plugin.BtrfsConfig()))


async def test_init_on_btrfs_builds_the_snapshotter(btrfs_mount: Path, tmp_path: Path) -> None:
    root = btrfs_mount / "plugin-init"
    reg = registration()
    sn = await reg.init(context(tmp_path, plugin.BtrfsConfig(root_path=str(root))))
    assert isinstance(sn, BtrfsSnapshotter) and sn.root == root
    await sn.prepare("a")
    assert reg.close is not None
    await reg.close(sn)
    assert (root / "metadata.db").is_file()
    btrfs.delete_tree(root / "snapshots" / "1")
