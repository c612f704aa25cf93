"""The streaming tests run on asyncio only: aiohttp and the daemon's gRPC need it."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
