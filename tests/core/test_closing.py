"""AsyncClosing: ``async with`` gives the object and always ends with its ``aclose``."""

from __future__ import annotations

import pytest

from runtime.core.closing import AsyncClosing


class _Held(AsyncClosing):
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_async_with_enters_as_the_object_and_closes_it() -> None:
    held = _Held()
    async with held as entered:
        assert entered is held and held.closed == 0
    assert held.closed == 1


async def test_async_with_closes_the_object_when_the_body_raises() -> None:
    held = _Held()
    with pytest.raises(KeyError):
        async with held:
            raise KeyError("x")
    assert held.closed == 1
