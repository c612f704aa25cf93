"""Fixtures of the example proxy's tests: short socket paths, asyncio only."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip locally, fail in CI: there a missing prerequisite is a broken machine."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp, client and server alike, runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for sockets: a unix socket path must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mpx"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def require_root() -> None:
    """The conformance suite mounts: it needs root."""
    if os.geteuid() != 0:
        unavailable("needs root (the conformance suite mounts)")
