"""Registration.named and InitContext.publish: the shapes every built-in plugin uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime.core.config import DaemonConfig
from runtime.core.events import Exchange
from runtime.core.host import PluginSet
from runtime.core.registration import InitContext, PluginConfig, Registration


async def _init(ctx: InitContext[Any]) -> None:
    return None


async def _close(service: Any) -> None:
    return None


class _Config(PluginConfig):
    pass


class _Made(msgspec.Struct):
    name: str


def test_named_registration_equals_the_one_built_field_by_field() -> None:
    named = Registration.named("content.local", _init, requires=("metadata.sqlite",),
                               config=_Config, close=_close, api_version=1, description="blobs")
    assert named == Registration(type="content", id="local", init=_init,
                                 requires=("metadata.sqlite",), config=_Config, close=_close,
                                 api_version=1, description="blobs")
    assert named.name == "content.local"


@pytest.mark.parametrize("name", ["content", "content.", ".local", "content.lo.cal", "Content.x"])
def test_named_registration_refuses_a_name_that_is_not_type_dot_id(name: str) -> None:
    with pytest.raises(ValueError, match="must"):
        Registration.named(name, _init)


def _context(tmp_path: Path, events: Exchange | None) -> InitContext[None]:
    return InitContext(registration=Registration.named("a.one", _init), config=None,
                       root=tmp_path, state=tmp_path, daemon=DaemonConfig(),
                       plugins=PluginSet(), events=events)


async def test_publish_reaches_the_exchange(tmp_path: Path) -> None:
    exchange = Exchange()
    async with exchange.subscribe() as subscription:
        envelope = _context(tmp_path, exchange).publish("ns1", "/things/make", _Made(name="x"))
        got = await subscription.__anext__()
    assert envelope is not None and got.topic == "/things/make" and got.event == _Made(name="x")


def test_publish_without_an_exchange_does_nothing(tmp_path: Path) -> None:
    assert _context(tmp_path, None).publish("ns1", "/things/make", _Made(name="x")) is None
