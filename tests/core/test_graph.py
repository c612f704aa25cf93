"""``runtime.core.graph``: plugins start after what they require, in a stable order."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.core.errors import FailedPrecondition
from runtime.core.graph import GraphError, order, providers
from runtime.core.registration import Registration


async def _init(ctx: Any) -> None:
    return None


def reg(name: str, *requires: str) -> Registration:
    type_, _, id_ = name.partition(".")
    return Registration(type=type_, id=id_, init=_init, requires=requires)


def names(regs: list[Registration]) -> list[str]:
    return [r.name for r in regs]


def test_order_requires_by_full_name() -> None:
    regs = [reg("api.namespaces", "metadata.sqlite"), reg("metadata.sqlite")]
    assert names(order(regs)) == ["metadata.sqlite", "api.namespaces"]


def test_order_requires_by_type_waits_for_every_plugin_of_that_type() -> None:
    regs = [
        reg("server.http", "api"),
        reg("api.system"),
        reg("metadata.sqlite"),
        reg("api.namespaces", "metadata.sqlite"),
    ]
    assert names(order(regs)) == [
        "api.system",
        "metadata.sqlite",
        "api.namespaces",
        "server.http",
    ]


def test_order_puts_the_event_exchange_first() -> None:
    """Every plugin's context carries the bus, so ``events`` plugins start before all others."""
    regs = [reg("metadata.sqlite"), reg("api.system"), reg("events.exchange")]
    assert names(order(regs)) == ["events.exchange", "metadata.sqlite", "api.system"]


def test_order_keeps_discovery_order_where_nothing_is_required() -> None:
    regs = [reg("b.one"), reg("a.two"), reg("c.three")]
    assert names(order(regs)) == ["b.one", "a.two", "c.three"]


def test_order_is_deterministic() -> None:
    regs = [
        reg("x.a", "y"),
        reg("y.b", "z.c"),
        reg("y.a"),
        reg("z.c"),
        reg("w.d", "x.a", "y.a"),
    ]
    first = names(order(regs))
    assert first == ["z.c", "y.b", "y.a", "x.a", "w.d"]
    assert all(names(order(list(regs))) == first for _ in range(20))


def test_order_cycle_error_names_the_plugins() -> None:
    regs = [reg("a.one", "b.two"), reg("b.two", "c.three"), reg("c.three", "a.one")]
    with pytest.raises(GraphError) as info:
        order(regs)
    assert str(info.value) == "dependency cycle: a.one -> b.two -> c.three -> a.one"


def test_order_cycle_through_a_type_requirement() -> None:
    regs = [reg("a.one", "b"), reg("b.two", "a.one")]
    with pytest.raises(GraphError, match=r"^dependency cycle: a\.one -> b\.two -> a\.one$"):
        order(regs)


def test_order_missing_requirement_names_plugin_and_requirement() -> None:
    regs = [reg("api.namespaces", "metadata.sqlite"), reg("server.http", "api", "tls")]
    with pytest.raises(GraphError) as info:
        order(regs)
    assert str(info.value) == (
        "no plugin provides: api.namespaces requires 'metadata.sqlite'; server.http requires 'tls'"
    )


def test_order_requirement_met_only_by_a_disabled_plugin_is_not_a_graph_error() -> None:
    """The dependant is ordered; it skips at start because its requirement is not running."""
    needy = reg("api.namespaces", "metadata.sqlite")
    assert names(order([needy], disabled=[reg("metadata.sqlite")])) == ["api.namespaces"]


def test_order_a_plugin_of_a_type_does_not_require_itself() -> None:
    regs = [reg("api.system"), reg("api.health", "api")]
    assert names(order(regs)) == ["api.system", "api.health"]


def test_graph_error_is_a_failed_precondition() -> None:
    assert issubclass(GraphError, FailedPrecondition)
    assert GraphError.code == "failed_precondition"


def test_providers_by_type_and_by_full_name() -> None:
    regs = [reg("api.system"), reg("api.namespaces"), reg("server.http")]
    assert names(providers("api", regs)) == ["api.system", "api.namespaces"]
    assert names(providers("api.system", regs)) == ["api.system"]
    assert providers("api.nothing", regs) == []


def test_registration_cannot_require_itself() -> None:
    with pytest.raises(ValueError, match=r"^plugin a\.one cannot require itself$"):
        reg("a.one", "a.one")
