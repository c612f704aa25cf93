"""``async with`` for objects closed by ``aclose()``: the protocol's two halves, once."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncClosing"]


class AsyncClosing:
    """Base of an object used as ``async with obj:`` that ``aclose()`` releases on the way out.

    Entering returns the object as it is (override ``__aenter__`` when entering
    opens something); leaving, for whatever reason, awaits :meth:`aclose`.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release what the object holds; safe to call more than once."""
        raise NotImplementedError
