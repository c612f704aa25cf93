"""A pod's IPC and UTS namespaces without an infra process: made in a thread, held by bind mounts.

A pod whose PID namespace is not shared (``NamespaceOption.pid`` ``CONTAINER``
or ``NODE``, the kubelet's default) needs no process of its own: what the
infra process did for it, holding the namespaces its containers join, a bind
mount of each namespace's ``nsfs`` file does (as CRI-O's ``pinns``). The
network namespace is ``network.cni``'s already; this module makes the other
two. :func:`pin` runs ``unshare(CLONE_NEWIPC | CLONE_NEWUTS)`` in a throwaway
thread (namespaces are per thread; it exits right after and never runs
anything else), sets the pod's hostname and its IPC and UTS sysctls there,
and bind-mounts the thread's ``ns/ipc`` and ``ns/uts`` on ``<pod dir>/ns/``.
No process is started. Containers join the files by path (see :mod:`.spec`);
:func:`unpin` unmounts them, and the namespaces go with the last container.

A pod with a user namespace (with infra or not) has it pinned too, with IPC,
UTS and network namespaces it owns, made by a process instead of a thread
(:func:`pin_with_user_namespace`, :mod:`runtime.pkg.userns`).

All functions block; call them from a worker thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from runtime.core.errors import FailedPrecondition
from runtime.pkg.namespaces import enter_netns, in_fresh_thread, pin_own
from runtime.pkg.namespaces import unpin as unpin_namespace
from runtime.pkg.userns import IDMapping, pin_new

__all__ = ["IPC", "NET", "USER", "UTS", "apply_sysctls", "pin", "pin_path",
           "pin_with_user_namespace", "pinned", "unpin"]

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
#: The namespaces pinned, by their name in ``/proc/<tid>/ns``.
IPC = "ipc"
UTS = "uts"
#: A pod with a user namespace pins it too, and its network namespace until
#: ``network.cni`` has pinned that one as its own (:func:`pin_with_user_namespace`).
USER = "user"
NET = "net"

_libc = ctypes.CDLL(None, use_errno=True)


def pin_path(directory: Path | str, kind: str) -> Path:
    """Where namespace ``kind`` (:data:`IPC`, :data:`UTS`) of the pod in ``directory`` is pinned."""
    return Path(directory) / "ns" / kind


def pinned(directory: Path | str, kinds: tuple[str, ...]) -> bool:
    """Whether every namespace of ``kinds`` is still pinned (false after a reboot)."""
    return all(os.path.ismount(pin_path(directory, kind)) for kind in kinds)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write_sysctls(sysctls: Mapping[str, str]) -> None:
    """Write ``sysctls`` (key -> value) in the calling thread's namespaces."""
    for key, value in sysctls.items():
        # As runc: dots are separators ("/" may be used too); specs checked the key.
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as file:
                file.write(value)
        except OSError as exc:
            raise FailedPrecondition(f"sysctl {key!r} = {value!r}: "
                                     f"{exc.strerror or exc}") from None


def pin(directory: Path, kinds: tuple[str, ...], *, hostname: str,
        sysctls: Mapping[str, str]) -> None:
    """New namespaces of ``kinds`` pinned under ``directory/ns``, hostname and sysctls set.

    ``hostname`` is set when :data:`UTS` is among ``kinds``; ``sysctls`` are
    the pod's IPC and UTS ones. Whatever failed is undone.

    Raises:
        FailedPrecondition: A sysctl could not be written.
        OSError: ``unshare`` or a bind mount failed.
    """
    if not kinds:
        return
    (directory / "ns").mkdir(parents=True, exist_ok=True, mode=0o711)
    for kind in kinds:
        fd = os.open(pin_path(directory, kind), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
        os.close(fd)
    flags = (CLONE_NEWIPC if IPC in kinds else 0) | (CLONE_NEWUTS if UTS in kinds else 0)

    def work() -> None:
        _check(_libc.unshare(flags), "unshare of the pod's namespaces")
        if UTS in kinds:
            socket.sethostname(hostname)
        _write_sysctls(sysctls)
        for kind in kinds:
            pin_own(kind, pin_path(directory, kind))

    try:
        in_fresh_thread(f"pins {directory.name[:8]}", work)
    except BaseException:
        unpin(directory)
        raise


#: Run inside the pod's namespaces as its root: ``hostname`` (or ``-``), then key-value pairs.
_SET_IN_POD = (
    'if [ "$1" != - ]; then hostname "$1" || exit 1; fi; shift; '
    'while [ $# -gt 1 ]; do '
    'printf %s "$2" > "/proc/sys/$1" || { echo "sysctl $1" >&2; exit 1; }; shift 2; done')


def pin_with_user_namespace(directory: Path, kinds: tuple[str, ...], *, uids: Sequence[IDMapping],
                            gids: Sequence[IDMapping], hostname: str,
                            sysctls: Mapping[str, str]) -> None:
    """A new user namespace and, owned by it, a network namespace and those of ``kinds``, pinned.

    The pod's containers (and infra process) join the user namespace first,
    so every other namespace they join must be owned by it; a thread cannot
    make them there (:mod:`runtime.pkg.userns`). The hostname and ``sysctls``
    (IPC and UTS ones) are set by a process that enters the namespaces as
    their root (``nsenter``): the kernel lets only the IPC namespace's root
    (or a process with ``CAP_CHECKPOINT_RESTORE`` there) write its sysctls,
    not the daemon's root, whose id is not mapped there. The network
    namespace is pinned on ``ns/net`` for ``network.cni`` to adopt, and
    unpinned by the caller after that. Whatever failed is undone.

    Raises:
        FailedPrecondition: A sysctl or the hostname could not be set.
        OSError: The namespaces cannot be made or pinned.
    """
    (directory / "ns").mkdir(parents=True, exist_ok=True, mode=0o711)
    wanted = (USER, NET, *kinds)
    try:
        pin_new({kind: pin_path(directory, kind) for kind in wanted}, uids, gids)
        if UTS in kinds or sysctls:
            _set_in_pod(directory, kinds, hostname if UTS in kinds else "-", sysctls)
    except BaseException:
        unpin(directory)
        raise


def _set_in_pod(directory: Path, kinds: tuple[str, ...], hostname: str,
                sysctls: Mapping[str, str]) -> None:
    # As runc: dots are separators ("/" may be used too); specs checked the keys.
    pairs = [item for key, value in sysctls.items()
             for item in (key.replace(".", "/"), value)]
    enter = [f"--user={pin_path(directory, USER)}",
             *(f"--{kind}={pin_path(directory, kind)}" for kind in kinds)]
    result = subprocess.run(["nsenter", *enter, "--", "sh", "-c", _SET_IN_POD, "sh",
                             hostname, *pairs],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FailedPrecondition(
            f"setting the pod's hostname or sysctls in its namespaces failed: "
            f"{result.stderr.strip() or result.returncode}")


def apply_sysctls(netns: str, sysctls: Mapping[str, str]) -> None:
    """Write the pod's ``net.*`` sysctls in its network namespace (pinned on ``netns``).

    Raises:
        FailedPrecondition: A sysctl could not be written, or the namespace is gone.
    """
    if not sysctls:
        return

    def work() -> None:
        try:
            enter_netns(netns)
        except OSError as exc:
            raise FailedPrecondition(f"network namespace {netns}: {exc.strerror}") from None
        _write_sysctls(sysctls)

    in_fresh_thread("pod sysctls", work)


def unpin(directory: Path | str) -> None:
    """Unmount the pod's pinned namespaces and remove their files; idempotent."""
    for kind in (IPC, UTS, NET, USER):
        unpin_namespace(pin_path(directory, kind))
