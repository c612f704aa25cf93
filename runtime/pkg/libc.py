"""The process's C library, for system calls Python 3.11 does not wrap (mount, setns, unshare)."""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["libc"]


@cache
def libc() -> Any:
    """libc, loaded by its first caller rather than when a module that may need it is imported.

    ``ctypes`` stays out of the daemon's start. ``dlopen(NULL)`` finds libc among
    the process's own libraries; ``ctypes.util.find_library`` would run
    ``ldconfig -p`` to find it.
    """
    import ctypes

    return ctypes.CDLL(None, use_errno=True)
