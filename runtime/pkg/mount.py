"""Perform and undo the mounts a snapshotter returns (Linux, needs ``CAP_SYS_ADMIN``).

:func:`mount_all` calls ``mount(2)`` through ctypes, turning ``mount(8)``
style options into flags and data. One case needs care: the kernel copies at
most one page (4096 bytes) of option data, and an overlay over a long chain of
layers with absolute ``lowerdir`` paths exceeds it. Like containerd (#2497),
the lower directories are then rewritten relative to their common parent and
the mount is done by a short-lived child process started in that directory:
``chdir`` is process-wide, and changing the daemon's own working directory
would break every other thread.

Example::

    mounts = await snapshotter.prepare("build", parent="base")
    async with mounted(mounts, Path("/run/moorage/rootfs")) as root:
        (root / "hello").write_text("hi")
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from runtime.api.mounts import Mount
from runtime.pkg.libc import libc as _lib

__all__ = ["bind_mount", "mount_all", "mounted", "recursive_attributes_supported", "unmount"]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# option -> (flag, set it?). Anything not listed here is passed on as data.
_FLAGS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "remount": (MS_REMOUNT, True),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "nostrictatime": (MS_STRICTATIME, False),
    "bind": (MS_BIND, True),
    "rbind": (MS_BIND | MS_REC, True),
}
# Propagation changes need a mount(2) call of their own, after the mount.
_PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}
# Flags a read-only bind remount must repeat, or the kernel drops them.
_KEEP_ON_REMOUNT = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME

_PAGE = os.sysconf("SC_PAGESIZE")

# Run by the child in the long-options case: argv = source target fstype flags data.
_CHILD = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
src, tgt, fstype, flags, data = sys.argv[1:]
if libc.mount(src.encode(), tgt.encode(), fstype.encode(), int(flags), data.encode()) != 0:
    e = ctypes.get_errno()
    sys.stderr.write(f"{e} {os.strerror(e)}")
    sys.exit(1)
"""


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    import ctypes

    rc = _lib().mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or '(flags)'} {source} on {target}: {os.strerror(err)}")


def bind_mount(source: str, target: str) -> None:
    """Bind-mount ``source`` on ``target`` (``mount(2)``, no recursion, no propagation change).

    Raises:
        OSError: The mount failed.
    """
    _mount(source, target, None, MS_BIND, "")


#: mount_setattr(2): the same number on every architecture (the unified syscall table).
_SYS_MOUNT_SETATTR = 442


def recursive_attributes_supported() -> bool:
    """Whether the kernel has ``mount_setattr(2)`` (Linux 5.12), which ``rro`` and friends need.

    Asked with an invalid descriptor: a kernel that has the call answers
    ``EBADF`` (or ``EINVAL``), one that lacks it ``ENOSYS``.
    """
    import ctypes

    if _lib().syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(-1), ctypes.c_char_p(b""),
                      ctypes.c_uint(0), None, ctypes.c_size_t(0)) == 0:
        return True
    return ctypes.get_errno() != errno.ENOSYS


def _parse(options: Sequence[str]) -> tuple[int, int, list[str]]:
    """Split ``mount(8)`` options into (flags, propagation flags, data options)."""
    flags = propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            flag, on = _FLAGS[option]
            flags = flags | flag if on else flags & ~flag
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        elif option != "defaults":
            data.append(option)
    return flags, propagation, data


def _compact_lowerdirs(data: list[str]) -> tuple[str, list[str]] | None:
    """Rewrite ``lowerdir=`` relative to the lowers' common parent: ``(cwd, data)``.

    Returns ``None`` when nothing can be shortened (one lower, no common parent).
    """
    index = next((i for i, o in enumerate(data) if o.startswith("lowerdir=")), -1)
    if index < 0:
        return None
    lowers = data[index].removeprefix("lowerdir=").split(":")
    if len(lowers) < 2 or not all(os.path.isabs(d) for d in lowers):
        return None
    common = os.path.commonpath(lowers)
    if common == "/" or common in lowers:
        return None
    relative = [os.path.relpath(d, common) for d in lowers]
    return common, [*data[:index], *data[index + 1 :], "lowerdir=" + ":".join(relative)]


def _mount_one(mount: Mount, target: Path) -> None:
    flags, propagation, data = _parse(mount.options)
    if mount.type == "bind":
        flags |= MS_BIND
    joined = ",".join(data)
    # The kernel copies one page, NUL included.
    if len(joined.encode()) + 1 > _PAGE and mount.type == "overlay":
        compacted = _compact_lowerdirs(data)
        if compacted is None:
            raise OSError(errno.E2BIG, f"mount options of {target} exceed {_PAGE} bytes")
        cwd, short = compacted
        joined = ",".join(short)
        if len(joined.encode()) + 1 > _PAGE:
            raise OSError(errno.E2BIG, f"mount options of {target} exceed {_PAGE} bytes")
        # -I -S: skip site and user paths; the child only needs ctypes.
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD, mount.source, str(target.absolute()),
             mount.type, str(flags), joined],
            cwd=cwd, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            code, _, message = result.stderr.strip().partition(" ")
            err = int(code) if code.isdigit() else errno.EIO
            raise OSError(err, f"mount {mount.type} on {target}: {message or result.stderr}")
    else:
        _mount(mount.source, str(target), mount.type, flags, joined)
    try:
        if flags & MS_BIND and flags & MS_RDONLY:
            # MS_RDONLY is ignored when a bind mount is created; it takes a remount.
            _mount(None, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY
                   | (flags & _KEEP_ON_REMOUNT), "")  # fmt: skip
        if propagation:
            _mount(None, str(target), None, propagation, "")
    except OSError:
        unmount(target, all_layers=False)
        raise


def mount_all(mounts: Sequence[Mount], target: Path | str) -> None:
    """Mount ``mounts`` in order on ``target`` (blocking; use a worker thread from async code).

    Each mount goes on ``target / mount.target`` (``target`` itself when
    ``mount.target`` is empty). If one fails, those already made are undone.

    Raises:
        OSError: ``mount(2)`` failed; the message names the mount and target.
    """
    root = Path(target)
    done: list[Path] = []
    try:
        for mount in mounts:
            where = root / mount.target if mount.target else root
            _mount_one(mount, where)
            done.append(where)
    except BaseException:
        for where in reversed(done):
            unmount(where, all_layers=False)
        raise


def unmount(target: Path | str, *, detach: bool = False, all_layers: bool = True) -> None:
    """Unmount ``target``; by default every mount stacked on it (blocking).

    A target that is not (or no longer) a mount point is not an error. A busy
    target is retried for about a second before giving up.

    Args:
        target: The mount point.
        detach: Lazy unmount (``MNT_DETACH``): detach now, clean up when idle.
        all_layers: Keep unmounting until ``target`` is no mount point.

    Raises:
        OSError: ``umount2(2)`` failed for another reason than "not mounted".
    """
    import ctypes

    path = str(target).encode()
    flags = MNT_DETACH if detach else 0
    busy = 0
    while True:
        if _lib().umount2(path, flags) == 0:
            busy = 0
            if all_layers:
                continue
            return
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err == errno.EBUSY and busy < 100:
            busy += 1
            time.sleep(0.01)
            continue
        raise OSError(err, f"unmount {target}: {os.strerror(err)}")


@asynccontextmanager
async def mounted(mounts: Sequence[Mount], target: Path | str) -> AsyncIterator[Path]:
    """Mount ``mounts`` on ``target`` for the duration of the block, then unmount.

    The unmount runs even when the block fails or is cancelled.

    Yields:
        ``target`` as a :class:`~pathlib.Path`.
    """
    path = Path(target)
    await anyio.to_thread.run_sync(mount_all, mounts, path)
    try:
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(unmount, path)
