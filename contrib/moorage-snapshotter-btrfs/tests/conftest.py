"""Fixtures of the btrfs snapshotter's tests: one loop-mounted btrfs for the session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from moorage_snapshotter_btrfs.testing import loop_btrfs, unavailable


@pytest.fixture
def anyio_backend() -> str:
    """The snapshotter runs under the daemon's asyncio loop."""
    return "asyncio"


@pytest.fixture(scope="session")
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh 512 MiB btrfs, loop-mounted for the whole session; tests use subdirectories."""
    if os.geteuid() != 0:
        unavailable("needs root (mount, btrfs subvolumes)")
    for tool in ("mkfs.btrfs", "btrfs", "losetup"):
        if shutil.which(tool) is None:
            unavailable(f"binary {tool!r} not found on PATH (apt-get install btrfs-progs)")
    base = tmp_path_factory.mktemp("btrfs")
    with loop_btrfs(base / "btrfs.img", base / "mnt") as mountpoint:
        yield mountpoint
