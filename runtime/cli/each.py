"""``for_each``: one request per name; print each success, report each failure, go on.

The commands taking several names (``rm`` of containers, tasks, images, content,
namespaces, snapshots) treat them alike, as ``ctr`` does: every name gets its
request even after one fails, and the exit status says whether any failed.
Only ``sys`` is imported up front: ``containers rm`` and ``tasks rm`` are on the
CLI's fast path, which must not pull in ``typing``.
"""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = ["for_each", "report"]


def for_each(names: Iterable[str], action: Callable[[str], object], *, echo: bool = True) -> int:
    """Call ``action(name)`` for every name; print the name once its call succeeded.

    A :class:`~runtime.core.errors.MoorageError` is reported on stderr as
    ``moorage: <code>: <message>`` and the loop goes on; any other exception
    propagates.

    Args:
        names: What to act on, in order.
        action: One request for one name.
        echo: Print each name that succeeded on stdout.

    Returns:
        The exit status: 1 if any call failed, else 0.
    """
    from runtime.core.errors import MoorageError

    failed = False
    for name in names:
        try:
            action(name)
        except MoorageError as exc:
            print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
            failed = True
        else:
            if echo:
                print(name)
    return 1 if failed else 0


def report(results: Iterable[Any], *, echo: bool = True) -> int:
    """:func:`for_each`'s output for the answer of a batch request (``runtime.api.batch``).

    Each result with an error code is reported on stderr as
    ``moorage: <code>: <message>``, each success printed (``echo``) on stdout.

    Returns:
        The exit status: 1 if any id failed, else 0.
    """
    failed = False
    for result in results:
        if result.code:
            print(f"moorage: {result.code}: {result.message}", file=sys.stderr)
            failed = True
        elif echo:
            print(result.id)
    return 1 if failed else 0
