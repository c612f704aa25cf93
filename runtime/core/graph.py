"""Ordering plugins by their ``requires``: a deterministic depth-first placement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.core.errors import FailedPrecondition
from runtime.core.registration import Registration

__all__ = ["GraphError", "dependencies", "order", "providers"]

#: Every plugin implicitly starts after the event exchange, so its init context
#: can carry the bus; the exchange itself requires nothing.
IMPLICIT_TYPES = ("events",)


class GraphError(FailedPrecondition):
    """The plugin graph cannot be ordered: a cycle or an unprovided requirement."""


def providers(requirement: str, registrations: Iterable[Registration]) -> list[Registration]:
    """The registrations a requirement names: ``type.id`` exactly, or every one of ``type``."""
    if "." in requirement:
        return [r for r in registrations if r.name == requirement]
    return [r for r in registrations if r.type == requirement]


def dependencies(reg: Registration, regs: Sequence[Registration]) -> list[Registration]:
    """What ``reg`` starts after: the providers of its ``requires`` and the event exchange."""
    deps: list[Registration] = []
    for req in reg.requires:
        deps.extend(p for p in providers(req, regs) if p is not reg)
    if reg.type not in IMPLICIT_TYPES:
        deps.extend(r for r in regs if r.type in IMPLICIT_TYPES)
    return deps


def order(
    registrations: Sequence[Registration], *, disabled: Iterable[Registration] = ()
) -> list[Registration]:
    """Order registrations so that each comes after everything it requires.

    Registrations keep their given order except where a requirement pulls one
    earlier, so the same inputs always give the same order.

    Args:
        registrations: The enabled plugins, in discovery order.
        disabled: Plugins removed by configuration; a requirement they alone
            would satisfy is not an error here (the dependant skips at start).

    Raises:
        GraphError: naming every requirement no plugin provides, or the plugins
            that form a cycle.
    """
    disabled = list(disabled)
    missing = [
        f"{reg.name} requires {req!r}"
        for reg in registrations
        for req in reg.requires
        if not [p for p in providers(req, [*registrations, *disabled]) if p is not reg]
    ]
    if missing:
        raise GraphError("no plugin provides: " + "; ".join(missing))

    placed: list[Registration] = []
    done: set[int] = set()
    stack: list[Registration] = []

    def place(reg: Registration) -> None:
        if id(reg) in done:
            return
        if any(r is reg for r in stack):
            cycle = [r.name for r in stack[[id(r) for r in stack].index(id(reg)) :]]
            raise GraphError("dependency cycle: " + " -> ".join([*cycle, reg.name]))
        stack.append(reg)
        for dep in dependencies(reg, registrations):
            place(dep)
        stack.pop()
        done.add(id(reg))
        placed.append(reg)

    for reg in registrations:
        place(reg)
    return placed
