"""Fault points: named places where a crash test can make the daemon die on the spot.

A test sets ``MOORAGE_FAULTS=gc.after-sweep`` (names separated by commas) in
the daemon's environment; when the daemon reaches ``fault_point("gc.after-sweep")``
it sends itself ``SIGKILL``: no cleanup, no ``finally``, no flushed buffers,
exactly what a power cut or the OOM killer leaves behind.

The variable is read once, at import. When it is unset, :func:`fault_point`
is a single test of an empty frozenset, so fault points may sit on hot paths.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV_VAR", "active_faults", "fault_point"]

#: The environment variable listing the fault points to fire.
ENV_VAR = "MOORAGE_FAULTS"

_ACTIVE = frozenset(name.strip() for name in os.environ.get(ENV_VAR, "").split(",") if name.strip())


def active_faults() -> frozenset[str]:
    """The fault point names this process will die at."""
    return _ACTIVE


def fault_point(name: str) -> None:
    """Die with ``SIGKILL`` here if ``name`` is listed in ``$MOORAGE_FAULTS``; else do nothing.

    Args:
        name: A dotted name, ``<subsystem>.<place>``, documented where it is called.
    """
    if _ACTIVE and name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
