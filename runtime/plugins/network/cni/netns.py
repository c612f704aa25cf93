"""Named network namespaces in a directory of our own, as ``ip netns add`` makes them.

A namespace lives as long as something holds it: a process inside it or a
bind mount of its ``nsfs`` file. :func:`create` makes a namespace in a
throwaway thread (``unshare(CLONE_NEWNET)`` affects only the calling thread,
and the thread exits right after), brings its loopback interface up from
that thread, and bind-mounts it on a file, so it outlives the thread until
:func:`remove` unmounts it.

All functions block; call them from a worker thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
from collections.abc import Collection
from pathlib import Path

from runtime.pkg.libc import libc as _libc
from runtime.pkg.mount import bind_mount
from runtime.pkg.namespaces import enter_netns, in_fresh_thread, pin_own, unpin

__all__ = ["addresses", "adopt", "create", "in_use", "loopback_up", "remove"]

CLONE_NEWNET = 0x40000000
# <linux/sockios.h>, <net/if.h>
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# struct ifreq: the name (IFNAMSIZ) then a 24-byte union, whose first member
# for these two requests is the short ifr_flags.
_IFREQ = struct.Struct("16sH22x")


def loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's network namespace.

    What the CNI ``loopback`` plugin and the OCI runtimes (for a namespace they
    create) do, without starting a process: the kernel gives a new namespace
    its ``lo`` with 127.0.0.1/8 and ::1, but down. A socket belongs to the
    namespace of the thread that opens it, so the ioctl reaches that ``lo``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ.pack(b"lo", 0)
        flags = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def create(path: Path) -> None:
    """Create a new network namespace with ``lo`` up and pin it on ``path``.

    Raises:
        FileExistsError: ``path`` exists (a namespace of that name is pinned).
        OSError: ``unshare`` or the bind mount failed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def pin() -> None:
        import ctypes

        if _libc().unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        loopback_up()
        pin_own("net", path)

    try:
        in_fresh_thread(f"netns {path.name}", pin)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def adopt(source: str, path: Path) -> None:
    """Pin the network namespace at ``source`` (made by the caller) on ``path``, ``lo`` up.

    For a namespace that must be owned by another user namespace than the
    daemon's (a CRI pod's with user namespaces): a thread cannot make one
    there, a process the caller started can. Once pinned it is ours as one
    :func:`create` made: :func:`remove` unpins it.

    Raises:
        FileExistsError: ``path`` exists.
        OSError: ``source`` is no network namespace, or the bind mount failed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def lo_up() -> None:
        enter_netns(path)
        loopback_up()

    try:
        bind_mount(source, str(path))
        in_fresh_thread(f"netns {path.name}", lo_up)
    except BaseException:
        unpin(path)
        raise


def remove(path: Path) -> None:
    """Unpin the namespace on ``path`` and remove the file; a missing one is no error.

    The namespace itself goes once nothing else holds it (its last process
    exited); its interfaces go with it.
    """
    unpin(path)


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


def addresses(path: Path, ifname: str) -> list[str]:
    """The global addresses of ``ifname`` in the namespace pinned on ``path``, as CIDRs.

    Empty when the namespace or the interface is not there. Runs ``ip`` in the
    namespace (``nsenter``): for the rare DEL that has no ADD result to go by.
    """
    listed = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", "address", "show",
                             "dev", ifname], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        return []
    try:
        links = json.loads(listed.stdout)
    except ValueError:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in links if isinstance(link, dict)
            for a in link.get("addr_info", [])
            if a.get("family") in ("inet", "inet6") and a.get("scope") == "global"]
