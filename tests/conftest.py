"""Shared fixtures: every async test runs on both anyio backends."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each async test once per anyio backend (aiohttp tests override this)."""
    return str(request.param)

pytest_plugins = ["tests.fixtures.plugin"]
