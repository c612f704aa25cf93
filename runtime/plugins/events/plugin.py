"""Registers the event exchange as ``events.exchange``; the exchange itself is in the core."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import msgspec

from runtime.core.events import Exchange
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.plugins.types import PluginType

__all__ = ["ExchangeConfig", "moorage_plugins"]


class ExchangeConfig(PluginConfig):
    """The ``[plugins."events.exchange"]`` section.

    Attributes:
        buffer_size: Unread events a subscriber may hold before it is
            disconnected as too slow.
    """

    buffer_size: Annotated[int, msgspec.Meta(ge=1)] = 1024


async def _init(ctx: InitContext[ExchangeConfig]) -> Exchange:
    return Exchange(buffer_size=ctx.config.buffer_size)


async def _close(exchange: Exchange) -> None:
    # Ends subscribers' streams so API handlers streaming events return at shutdown.
    exchange.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """Declare ``events.exchange``."""
    yield Registration.named(
        f"{PluginType.EVENTS}.exchange", _init, close=_close, config=ExchangeConfig,
        description="publish/subscribe of daemon events, one bounded buffer per subscriber")
