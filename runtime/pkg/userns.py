"""User namespaces with an ID mapping, pinned by bind mounts, and idmapped mounts for their roots.

A user namespace cannot be made by a thread of a multi-threaded process
(``unshare(CLONE_NEWUSER)`` and ``setns`` to one answer ``EINVAL`` there), so
:func:`pin_new` starts a short-lived process (util-linux ``unshare``) that
makes it together with the other namespaces asked for, which it then owns:
a process joining the user namespace has the capabilities it needs in them
(mounting ``sysfs`` needs the network namespace's owner, ``mqueue`` the IPC
namespace's). The daemon writes the mapping, bind-mounts the namespaces'
``nsfs`` files on pin files and ends the process; they live until unpinned
and their last process has gone.

A file owned by host root is ``nobody`` inside such a namespace. runc 1.1
cannot make idmapped mounts, so the daemon maps a container's root filesystem
through the namespace itself (``mount_setattr(2)`` ``MOUNT_ATTR_IDMAP``,
Linux 5.12): its files are then owned by the namespace's root inside. An
overlay cannot be idmapped as a whole; its layers can (5.19).
:func:`idmapped_overlay` mounts it over idmapped clones of its lower
directories and hands the upper directory's root to the mapped root (what
the container writes is stored with its host ids, which its namespace maps
back, as containerd's remapped snapshots store it); :func:`idmap_mount`
replaces any other mount (a bind of a directory) with an idmapped clone.

All functions block; call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from runtime.api.mounts import Mount
from runtime.pkg.libc import libc as _libc
from runtime.pkg.mount import bind_mount

__all__ = ["IDMAP_ROOTFS_ANNOTATION", "IDMapping", "idmap_mount", "idmap_supported",
           "idmapped_overlay", "pin_new"]

#: Spec annotation: the runtime maps the root filesystem through the spec's
#: user namespace (``linux.namespaces`` ``user`` with a ``path``) before the
#: OCI runtime runs (read and removed by ``runtime.runc``'s bundle).
IDMAP_ROOTFS_ANNOTATION = "io.moorage.rootfs.idmap"

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MNT_DETACH = 2
# The unified syscall table: the same numbers on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442


@cache
def _mount_attr_type() -> Any:
    """``struct mount_attr`` of ``mount_setattr(2)``."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    return MountAttr


class IDMapping(msgspec.Struct, frozen=True):
    """One line of ``uid_map``/``gid_map``: ``size`` ids from ``container_id`` on ``host_id``."""

    container_id: int
    host_id: int
    size: int

    def line(self) -> str:
        """The mapping as the kernel's map files write it."""
        return f"{self.container_id} {self.host_id} {self.size}\n"


def _check(rc: int, what: str) -> int:
    import ctypes

    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


@contextlib.contextmanager
def _holder(kinds: Sequence[str], uids: Sequence[IDMapping],
            gids: Sequence[IDMapping]) -> Iterator[int]:
    """A process in a new user namespace (mapped) and new namespaces ``kinds``; yields its pid.

    The process waits on its stdin and exits when it is closed, also when the
    daemon dies meanwhile (nothing is left then: the namespaces were not pinned).
    """
    flags = ["--user", *(f"--{kind}" for kind in kinds)]
    proc = subprocess.Popen(["unshare", *flags, "--", "sh", "-c", "echo; exec cat"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"\n":
            proc.wait()
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise OSError(f"cannot make a user namespace: {err or proc.returncode}")
        # Written by a privileged parent: no newuidmap, no setgroups deny needed.
        Path(f"/proc/{proc.pid}/uid_map").write_text("".join(m.line() for m in uids))
        Path(f"/proc/{proc.pid}/gid_map").write_text("".join(m.line() for m in gids))
        yield proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def pin_new(pins: dict[str, Path], uids: Sequence[IDMapping], gids: Sequence[IDMapping]) -> None:
    """Make a user namespace with the mappings and, owned by it, the other namespaces of ``pins``.

    ``pins`` maps a namespace's name in ``/proc/PID/ns`` (``user``, ``net``,
    ``ipc``, ``uts``) to the file it is pinned on; ``user`` must be one.

    Raises:
        OSError: The namespaces cannot be made or pinned (those pinned stay:
            the caller unpins them, as after a crash).
    """
    others = [kind for kind in pins if kind != "user"]
    with _holder(others, uids, gids) as pid:
        for kind, target in pins.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(mode=0o444, exist_ok=True)
            bind_mount(f"/proc/{pid}/ns/{kind}", str(target))


def _open_tree_clone(path: Path | str) -> int:
    import ctypes

    return _check(_libc().syscall(_SYS_OPEN_TREE, ctypes.c_int(_AT_FDCWD), os.fsencode(path),
                                ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)),
                  f"open_tree {path}")


def _set_idmap(tree: int, userns_fd: int, path: Path | str) -> None:
    import ctypes

    attr = _mount_attr_type()(attr_set=_MOUNT_ATTR_IDMAP, attr_clr=0, propagation=0,
                              userns_fd=userns_fd)
    _check(_libc().syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(tree), b"",
                         ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))),
           f"mount_setattr MOUNT_ATTR_IDMAP {path}")


def idmap_mount(target: Path | str, userns: Path | str) -> None:
    """Replace the mount on ``target`` with a clone of it idmapped through the user namespace file.

    The clone keeps the filesystem mounted while the original is detached, so
    ``target`` ends as one mount, unmounted as before.

    Raises:
        OSError: The filesystem cannot be idmapped, or a step failed (the
            original mount is then still on ``target``).
    """
    import ctypes

    tree = _open_tree_clone(target)
    try:
        userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _set_idmap(tree, userns_fd, target)
        finally:
            os.close(userns_fd)
        _check(_libc().umount2(os.fsencode(target), ctypes.c_int(_MNT_DETACH)), f"umount {target}")
        _check(_libc().syscall(_SYS_MOVE_MOUNT, ctypes.c_int(tree), b"", ctypes.c_int(_AT_FDCWD),
                             os.fsencode(target), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)),
               f"move_mount {target}")
    finally:
        os.close(tree)


@contextlib.contextmanager
def idmapped_overlay(mount: Mount, userns: Path | str, root_uid: int,
                     root_gid: int) -> Iterator[Mount]:
    """``mount`` (an overlay) over idmapped clones of its lower directories, while in the block.

    The clones are detached mounts, reached as ``/proc/<daemon pid>/fd/N``
    (also from the child process :mod:`runtime.pkg.mount` may use): mount
    the result inside the block; the overlay keeps its layers after that.
    ``root_uid``/``root_gid`` (the host ids of the namespace's root) get the
    upper directory's root, which is the overlay's root directory.

    Raises:
        OSError: A layer cannot be idmapped.
    """
    fds: list[int] = []
    try:
        userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            options = []
            for option in mount.options:
                if option.startswith("lowerdir="):
                    lowers = []
                    for lower in option.removeprefix("lowerdir=").split(":"):
                        tree = _open_tree_clone(lower)
                        fds.append(tree)
                        _set_idmap(tree, userns_fd, lower)
                        lowers.append(f"/proc/{os.getpid()}/fd/{tree}")
                    option = "lowerdir=" + ":".join(lowers)
                elif option.startswith("upperdir="):
                    os.chown(option.removeprefix("upperdir="), root_uid, root_gid)
                options.append(option)
        finally:
            os.close(userns_fd)
        yield Mount(type=mount.type, source=mount.source, target=mount.target, options=options)
    finally:
        for fd in fds:
            os.close(fd)


def idmap_supported(paths: Sequence[Path | str]) -> str:
    """Why mounts of ``paths``' filesystems cannot be idmapped here, ``""`` when they can.

    Tried for real, as critest does: a throwaway user namespace and a clone of
    each path (never attached) mapped through it.
    """
    try:
        with _holder([], [IDMapping(0, 65536, 65536)], [IDMapping(0, 65536, 65536)]) as pid:
            userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            try:
                for path in paths:
                    tree = _open_tree_clone(path)
                    try:
                        _set_idmap(tree, userns_fd, path)
                    finally:
                        os.close(tree)
            finally:
                os.close(userns_fd)
    except (OSError, FileNotFoundError) as exc:
        return str(exc)
    return ""
