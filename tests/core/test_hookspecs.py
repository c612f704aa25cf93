"""``runtime.core.hookspecs``: every hook is specified once and tested by ``test_hook_<name>``."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from runtime.core.discovery import PluginSource, discover
from runtime.core.hookspecs import PROJECT, MoorageSpecs, hookimpl
from runtime.core.registration import Registration

TESTS = Path(__file__).resolve().parents[1]


def hook_names() -> list[str]:
    return sorted(name for name in vars(MoorageSpecs) if name.startswith(f"{PROJECT}_"))


async def _init(ctx: Any) -> None:
    return None


def module(name: str, **hooks: Any) -> tuple[PluginSource, ModuleType]:
    mod = ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return PluginSource("test-dist", "1.0", name, name), mod


def test_every_hook_has_a_test() -> None:
    tests = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    missing = [n for n in hook_names() if not re.search(rf"^def test_hook_{n}\b", tests, re.M)]
    assert missing == []


def test_every_hook_is_documented_and_prefixed() -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(MoorageSpecs)
    for name in hook_names():
        doc = getattr(MoorageSpecs, name).__doc__ or ""
        assert "Example::" in doc and "Returns:" in doc, name
    assert hook_names() == ["moorage_plugins"]


def test_hook_moorage_plugins() -> None:
    """A generator, a list and ``None`` are all accepted; results are merged in order."""

    def as_generator() -> Any:
        yield Registration(type="a", id="one", init=_init)
        yield Registration(type="a", id="two", init=_init)

    def as_list() -> Any:
        return [Registration(type="b", id="one", init=_init)]

    def as_none() -> Any:
        return None

    found = discover(
        "tests.no-such-group",
        modules=[
            module("gen", moorage_plugins=as_generator),
            module("lst", moorage_plugins=as_list),
            module("none", moorage_plugins=as_none),
        ],
    )
    assert found.failures == []
    assert [r.name for r, _ in found.registrations] == ["a.one", "a.two", "b.one"]
