"""Pytest fixtures of the runtime tests: load with ``pytest_plugins``, never import directly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.runtime.helpers import RuntimeDaemon, make_rootfs, require_runtime_host


@pytest.fixture(scope="session")
def pristine_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox rootfs, built once per session (copy it before letting tasks write)."""
    require_runtime_host()
    return make_rootfs(tmp_path_factory.mktemp("pristine") / "rootfs")


@pytest.fixture
def rootfs(pristine_rootfs: Path, tmp_path: Path) -> Path:
    """A private copy of the busybox rootfs for one test."""
    target = tmp_path / "rootfs"
    shutil.copytree(pristine_rootfs, target, symlinks=True)
    return target


@pytest.fixture
def rd(tmp_path: Path) -> Iterator[RuntimeDaemon]:
    """A running daemon for runtime tests, cleaned up thoroughly."""
    require_runtime_host()
    running = RuntimeDaemon(tmp_path)
    try:
        yield running
    finally:
        running.close()
