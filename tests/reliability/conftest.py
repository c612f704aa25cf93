"""Fixtures of the reliability suites: a busybox root filesystem and a fault-injecting registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.fake_registry import FakeRegistry


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem directory, shared: tasks only read it."""
    from tests.plugins.runtime.helpers import make_rootfs, require_runtime_host

    require_runtime_host()
    return make_rootfs(tmp_path_factory.mktemp("reliability-rootfs") / "rootfs")


@pytest.fixture(scope="module")
def fake_registry() -> Iterator[FakeRegistry]:
    """A registry serving in-memory images (stalls cut after 60 s, whatever happens)."""
    with FakeRegistry(stall_seconds=60.0) as registry:
        yield registry
