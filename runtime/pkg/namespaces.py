"""Namespaces held by bind mounts instead of processes: made in a throwaway thread, unpinned.

``unshare`` of a network, IPC or UTS namespace changes only the calling
thread, so it runs in a fresh thread that is never reused (a pool worker would
carry the namespaces into unrelated work). The thread bind-mounts its own
``/proc/self/task/<tid>/ns/<kind>`` file on a pin file; the namespace then
lives until it is unpinned and its last process has gone. Used by
``network.cni`` (pod and container network namespaces) and ``cri.v1`` (a pod's
IPC and UTS namespaces). :func:`enter_netns` moves such a thread into a
network namespace already made (Python 3.11 has no ``os.setns``).

All functions block; call them from a worker thread.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from runtime.pkg.libc import libc as _libc
from runtime.pkg.mount import bind_mount, unmount

__all__ = ["CLONE_NEWNET", "enter_netns", "in_fresh_thread", "pin_own", "unpin"]

CLONE_NEWNET = 0x40000000


def in_fresh_thread(name: str, work: Callable[[], None]) -> None:
    """Run ``work`` in a new thread that may leave for other namespaces; re-raise its error."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def enter_netns(path: Path | str) -> None:
    """Move the calling thread into the network namespace at ``path`` (a pin, ``/proc/PID/ns/net``).

    For a thread of :func:`in_fresh_thread` only: the thread stays there.

    Raises:
        OSError: ``path`` cannot be opened, or is no network namespace.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        import ctypes

        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def pin_own(kind: str, target: Path | str) -> None:
    """Bind-mount the calling thread's namespace ``kind`` (``net``, ``ipc``, ``uts``) on ``target``.

    Raises:
        OSError: The bind mount failed.
    """
    bind_mount(f"/proc/self/task/{threading.get_native_id()}/ns/{kind}", str(target))


def unpin(path: Path | str) -> None:
    """Unmount the namespace pinned on ``path`` and remove the file; a missing one is no error."""
    try:
        unmount(path, detach=True)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise
    Path(path).unlink(missing_ok=True)
