"""The docker/nerdctl-style top-level verbs: ``ps``, ``exec``, ``stop``, ``rm``, ``inspect``...

They sit over the same API as the ctr-style trees (``containers``, ``tasks``,
``images``), which stay as they are. A container is named by its id, by the
name ``rename`` gave it (the :data:`NAME_LABEL` label) or by a unique prefix of
its id, as Docker users type them. Errors of the user's own making (an unknown
flag, a bad value) exit 125 after the subcommand's usage, as Docker's do.

This package holds what the verbs share (the parser's error style, naming a
container, acting on several); each module of it is one group of
:data:`runtime.cli.main.GROUPS`, adding its commands with ``register(sub)``.
"""

from __future__ import annotations

import sys

from runtime.api.constants import NAME_LABEL

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "EXIT_USAGE",
    "LIVE",
    "NAME_LABEL",
    "adder",
    "ago",
    "client",
    "docker_parser",
    "each",
    "name_of",
    "resolve",
    "task_of",
]

#: Exit status of a command line Moorage refused (Docker's).
EXIT_USAGE = 125
#: Task states in which a container counts as running.
LIVE = ("running", "paused")


def adder(sub: Any) -> Callable[..., argparse.ArgumentParser]:
    """``add(name, handler, help, aliases=())``: a Docker-style subcommand of ``sub``."""

    def add(name: str, handler: Callable[[Any], int], helptext: str,
            aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        p = docker_parser(sub.add_parser(name, help=helptext, aliases=list(aliases)))
        p.set_defaults(handler=handler)
        return p

    return add


def docker_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report its errors as Docker does: its own usage, then exit 125."""

    def error(message: str) -> Any:
        parser.print_usage(sys.stderr)
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message}\n"
                                f"See '{parser.prog} --help'.\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def client(args: Any) -> Any:
    """The API client for the global flags (:func:`runtime.cli.main.client`)."""
    from runtime.cli import main

    return main.client(args)


def resolve(api: Any, ref: str) -> str:
    """The id of the container ``ref`` names: its id, its name, or a unique id prefix."""
    from runtime.core.errors import InvalidArgument, NotFound

    try:
        return str(api.container(ref).id)
    except NotFound:
        pass
    except InvalidArgument:
        pass  # not a valid id: maybe a name or prefix still
    containers = api.containers()
    named = [c.id for c in containers if c.labels.get(NAME_LABEL) == ref]
    if len(named) == 1:
        return str(named[0])
    prefixed = [c.id for c in containers if c.id.startswith(ref)] if ref else []
    if len(prefixed) == 1:
        return str(prefixed[0])
    if prefixed:
        raise InvalidArgument(f"container {ref!r} is ambiguous: {', '.join(sorted(prefixed))}")
    raise NotFound(f"no such container: {ref}")


def task_of(api: Any, container_id: str) -> Any:
    """The container's task, or ``None``."""
    from runtime.core.errors import NotFound

    try:
        return api.task(container_id)
    except NotFound:
        return None


def each(refs: list[str], action: Callable[[Any, str], object], args: Any,
          echo: bool = True) -> int:
    """Resolve and act on every ref; report each failure; 1 if any failed."""
    from runtime.core.errors import MoorageError

    api = client(args)
    failed = False
    for ref in refs:
        try:
            action(api, resolve(api, ref))
        except MoorageError as exc:
            print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
            failed = True
            continue
        if echo:
            print(ref)
    return 1 if failed else 0


def name_of(container: Any) -> str:
    """The name ``rename`` gave the container, else its id."""
    return str(container.labels.get(NAME_LABEL) or container.id)


def ago(when: Any) -> str:
    """``5 seconds ago``, ``3 minutes ago``... (Docker's wording)."""
    from datetime import UTC, datetime

    if when is None:
        return ""
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a second ago" if seconds < 1 else f"{seconds} seconds ago"
