"""Find a program on ``PATH`` the way :func:`shutil.which` does (POSIX).

The daemon looks up its OCI runtime and monitor while it starts; ``shutil``
imports ``bz2``, ``lzma`` and ``zlib`` when it is imported, about 2 ms of a
start that needs none of them (docs/performance.md, entry 35).
"""

from __future__ import annotations

import os

__all__ = ["which"]


def _runnable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.X_OK) and not os.path.isdir(path)


def which(name: str) -> str | None:
    """The path of the executable ``name`` on ``PATH``, or None: :func:`shutil.which`'s answer.

    A name with a directory part is checked as it is. Without ``PATH`` in the
    environment the system's default search path is used; an empty ``PATH``
    finds nothing; each directory is tried once, in order.
    """
    if os.path.dirname(name):
        return name if _runnable(name) else None
    path = os.environ.get("PATH")
    if path is None:
        try:
            path = os.confstr("CS_PATH")
        except (AttributeError, ValueError):
            path = os.defpath
    if not path:
        return None
    for directory in dict.fromkeys(path.split(os.pathsep)):
        candidate = os.path.join(directory, name)
        if _runnable(candidate):
            return candidate
    return None
