"""Acceptance of issue 8: a snapshotter shipped as its own pip package.

With ``moorage-snapshotter-btrfs`` installed and its section pointing at a
btrfs mount, a daemon lists ``snapshotter btrfs ok`` with the package's
distribution and version and serves snapshots on it. Uninstalled (and its
section removed, since a section for a plugin that does not exist is a config
error), a restarted daemon no longer has it and runs everything else as
before. The package is reinstalled the way it was found, whatever happens.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import Daemon
from tests.fixtures.system import require_binary, require_root, unavailable

DIST = "moorage-snapshotter-btrfs"
SOURCE = Path(__file__).resolve().parents[2] / "contrib" / "moorage-snapshotter-btrfs"


def installed_version() -> str | None:
    importlib.invalidate_caches()
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


def pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stderr}"


def reinstall_command() -> list[str]:
    """The pip arguments that put the package back the way it is installed now."""
    direct = metadata.distribution(DIST).read_text("direct_url.json")
    info = json.loads(direct) if direct else {}
    url = info.get("url", "")
    path = url.removeprefix("file://") if url.startswith("file://") else str(SOURCE)
    editable = info.get("dir_info", {}).get("editable", False)
    # No build isolation: the build backend is already installed, and the
    # reinstall must not depend on reaching a package index.
    return [
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        *(["-e"] if editable else []),
        path,
    ]


def plugins_ls(daemon: Daemon, *flags: str) -> str:
    """Run the real ``moorage plugins ls`` against ``daemon``."""
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "--address", daemon.address,
         "plugins", "ls", *flags],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def plugin_rows(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {f"{p['type']}.{p['id']}": p for p in json.loads(plugins_ls(daemon, "--format", "json"))}


@pytest.fixture
def btrfs_mount(tmp_path: Path) -> Iterator[Path]:
    require_root()
    for tool in ("mkfs.btrfs", "btrfs", "losetup"):
        require_binary(tool)
    if installed_version() is None:
        unavailable(f"{DIST} is not installed (scripts/setup.sh installs it)")
    from moorage_snapshotter_btrfs.testing import loop_btrfs

    with loop_btrfs(tmp_path / "btrfs.img", tmp_path / "mnt") as mountpoint:
        yield mountpoint


def test_btrfs_package_installed_listed_served_then_uninstalled_gone(
    tmp_path: Path, btrfs_mount: Path
) -> None:
    version = installed_version()
    root = btrfs_mount / "moorage"
    section = f'[plugins."snapshotter.btrfs"]\nroot_path = "{root}"\n'

    with Daemon(tmp_path / "d", section) as daemon:
        rows = plugin_rows(daemon)
        btrfs = rows["snapshotter.btrfs"]
        assert (btrfs["status"], btrfs["distribution"], btrfs["version"]) == ("ok", DIST, version)
        assert btrfs["api_version"] == 1
        assert re.search(
            rf"^snapshotter\s+btrfs\s+ok\s+{DIST} {re.escape(str(version))}\s*$",
            plugins_ls(daemon),
            re.MULTILINE,
        ), plugins_ls(daemon)
        # The namespaced snapshot service wraps it like any built-in snapshotter.
        client = daemon.client()
        [mount] = client.prepare_snapshot("btrfs", "acceptance")
        assert mount.type == "bind" and mount.source.startswith(f"{root}/snapshots/")
        client.remove_snapshot("btrfs", "acceptance")
    before = {name: row["status"] for name, row in rows.items() if name != "snapshotter.btrfs"}

    reinstall = reinstall_command()
    try:
        pip("uninstall", "-y", DIST)
        assert installed_version() is None
        # Restart on the same root with the section gone: a section naming a
        # plugin that no installed package provides is a config error.
        with Daemon(tmp_path / "d", "") as daemon:
            rows = plugin_rows(daemon)
            assert "snapshotter.btrfs" not in rows
            assert {name: row["status"] for name, row in rows.items()} == before
            assert "btrfs" not in plugins_ls(daemon)
    finally:
        pip(*reinstall)
    assert installed_version() == version


def test_skips_when_root_is_not_on_btrfs(tmp_path: Path) -> None:
    """Installed but pointed at a non-btrfs root: status skip naming root and filesystem."""
    if installed_version() is None:
        unavailable(f"{DIST} is not installed (scripts/setup.sh installs it)")
    root = tmp_path / "not-btrfs"
    found = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if found == "btrfs":
        unavailable("the test directory itself is on btrfs")
    section = f'[plugins."snapshotter.btrfs"]\nroot_path = "{root}"\n'
    with Daemon(tmp_path / "d", section) as daemon:
        btrfs = plugin_rows(daemon)["snapshotter.btrfs"]
        assert (btrfs["status"], btrfs["reason"]) == (
            "skip",
            f"{root} is not on btrfs (found {found})",
        )
        assert daemon.client().healthz().status == "ok"
    assert not root.exists()
