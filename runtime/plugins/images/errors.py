"""Errors of concurrent work: report the first real failure, not a group of them.

Pulls and pushes run siblings in task groups; when one fails, the group wraps
its error (and the cancellations it caused) in an exception group. Callers of
the service, and the API's error shape, want the one error that explains it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from runtime.core.errors import MoorageError

__all__ = ["first_error", "single_error"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first domain error in ``group``, else its first ordinary exception."""
    leaves = list(_leaves(group))
    for exc in leaves:
        if isinstance(exc, MoorageError):
            return exc
    return next((exc for exc in leaves if isinstance(exc, Exception)), None)


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise an exception group from the block as its :func:`first_error`."""
    try:
        yield
    except BaseExceptionGroup as group:
        exc = first_error(group)
        if exc is None:
            raise
        raise exc from None
