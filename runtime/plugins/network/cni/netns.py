"""Named network namespaces in a directory of our own, as ``ip netns add`` makes them.

A namespace lives as long as something holds it: a process inside it or a
bind mount of its ``nsfs`` file. :func:`create` makes a namespace in a
throwaway thread (``unshare(CLONE_NEWNET)`` affects only the calling thread,
and the thread exits right after) and bind-mounts it on a file, so it outlives
the thread until :func:`remove` unmounts it.

All functions block; call them from a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Collection
from pathlib import Path

from runtime.plugins.snapshots.mount import MS_BIND, unmount

__all__ = ["create", "in_use", "remove"]

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def create(path: Path) -> None:
    """Create a new network namespace and pin it on ``path``.

    Raises:
        FileExistsError: ``path`` exists (a namespace of that name is pinned).
        OSError: ``unshare`` or the bind mount failed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    failure: list[BaseException] = []

    def pin() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
            _mount(own, str(path), MS_BIND)
        except BaseException as exc:
            failure.append(exc)

    # A fresh thread, never a pool worker: it leaves our network namespace for
    # good, and must not run anything else afterwards.
    thread = threading.Thread(target=pin, name=f"netns {path.name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        path.unlink(missing_ok=True)
        raise failure[0]


def remove(path: Path) -> None:
    """Unpin the namespace on ``path`` and remove the file; a missing one is no error.

    The namespace itself goes once nothing else holds it (its last process
    exited); its interfaces go with it.
    """
    try:
        unmount(path, detach=True)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise
    path.unlink(missing_ok=True)


def in_use(paths: Collection[Path]) -> set[Path]:
    """Those of ``paths`` whose namespace some process on the host is in.

    A container's processes keep their namespace; when none is left, the
    container no longer runs, whatever our records say. Compared by the
    namespace's inode, which ``stat`` of a pinned file and ``/proc/<pid>/ns/net``
    both give.
    """
    by_inode: dict[int, Path] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        # An unpinned leftover file is a plain empty file on the state filesystem.
        if os.path.ismount(path):
            by_inode[st.st_ino] = path
    found: set[Path] = set()
    if not by_inode:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if inode in by_inode:
            found.add(by_inode[inode])
    return found
