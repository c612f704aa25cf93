"""Tar a path out of a directory tree, or a tar into it, never leaving the tree (``cp``).

The tree is a container's root seen from the host, so its symlinks mean what
they mean inside the container: ``/etc`` -> ``/host/etc`` names the container's
``/host/etc``, and ``..`` stops at its root. Every path is resolved with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` relative to a descriptor
of the root (the kernel's securejoin: no check-then-use race with a process in
the container swapping a directory for a symlink), and every entry below it is
reached by ``*at`` calls with ``O_NOFOLLOW`` from its parent's descriptor.

A path the caller gives that climbs above the root by itself (``/../x``) is
refused rather than clamped: the user meant the host, and gets an error
instead of a surprise. Owners, modes, times and symlink targets are kept both
ways (owners only when running as root); hardlinks inside one tar are linked.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tarfile
from typing import IO, Protocol

from runtime.core.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg.archive.members import clean_parts

__all__ = [
    "PathStat",
    "Readable",
    "extract_tar",
    "open_in_root",
    "open_root",
    "path_parts",
    "stat_path",
    "write_tar",
]

_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1 << 20


class Readable(Protocol):
    """What :func:`extract_tar` reads: a forward-only byte stream."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left if negative); ``b""`` at the end."""
        ...


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_root(path: str) -> int:
    """A descriptor of the tree's root directory (``/proc/<pid>/root`` works)."""
    try:
        return os.open(path, _DIR)
    except OSError as exc:
        raise NotFound(f"root {path}: {exc.strerror}") from None


def _open(root_fd: int, parts: list[str] | tuple[str, ...], flags: int, shown: str) -> int:
    """``openat2`` of ``parts`` inside the root; symlinks followed within it."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    path = ("/".join(parts) or ".").encode()
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(root_fd), ctypes.c_char_p(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        if code in (errno.ENOENT, errno.ENOTDIR):
            raise NotFound(f"no such file or directory: {shown}")
        if code == errno.ENOSYS:  # pragma: no cover - kernels before 5.6
            raise FailedPrecondition("this kernel lacks openat2 (Linux 5.6+), needed by cp")
        raise InvalidArgument(f"{shown}: {os.strerror(code)}")
    return int(fd)


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """A descriptor of ``path`` inside the root, every symlink resolved within it.

    Raises:
        NotFound: Nothing is there.
        InvalidArgument: The path climbs out of the root, or ``openat2`` refused it.
    """
    return _open(root_fd, path_parts(path), flags, path)


def path_parts(path: str, what: str = "path") -> list[str]:
    """``path``'s components, ``.`` and ``..`` applied; refused if it climbs above the root."""
    parts = clean_parts(path)
    if parts is None:
        raise InvalidArgument(f"{what} {path!r} climbs out of the container's root")
    return parts


class PathStat:
    """What ``stat`` tells of one path in the tree (the path itself, not a symlink's target)."""

    def __init__(self, name: str, st: os.stat_result, link_target: str) -> None:
        self.name = name
        self.mode = st.st_mode
        self.size = st.st_size
        self.mtime = st.st_mtime
        self.link_target = link_target

    @property
    def is_dir(self) -> bool:
        """Whether the path is a directory."""
        return stat.S_ISDIR(self.mode)


def stat_path(root_fd: int, path: str, *, follow: bool = True) -> PathStat:
    """Stat ``path`` inside the root (its last symlink followed, within the root, if ``follow``).

    Raises:
        NotFound: Nothing is there.
        InvalidArgument: The path climbs out of the root.
    """
    parts = path_parts(path)
    if not parts:
        return PathStat("/", os.fstat(root_fd), "")
    fd = _open(root_fd, parts[:-1], os.O_PATH | os.O_DIRECTORY, path)
    try:
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        raise NotFound(f"no such file or directory: {path}") from None
    finally:
        os.close(fd)
    target = ""
    if stat.S_ISLNK(st.st_mode):
        if follow:
            leaf = _open(root_fd, parts, os.O_PATH, path)
            try:
                return PathStat(parts[-1], os.fstat(leaf), "")
            finally:
                os.close(leaf)
        fd = _open(root_fd, parts[:-1], os.O_PATH | os.O_DIRECTORY, path)
        try:
            target = os.readlink(parts[-1], dir_fd=fd)
        finally:
            os.close(fd)
    return PathStat(parts[-1], st, target)


# -- out: a path as a tar -----------------------------------------------------------------


def write_tar(root_fd: int, path: str, out: IO[bytes], *, name: str = "",
              follow: bool = False) -> None:
    """Write ``path`` (recursively, as entry ``name``, default its base name) as a PAX tar.

    Args:
        root_fd: The root the path is resolved in.
        path: Inside the root; ``..`` may not climb above it.
        out: Where the tar goes (written sequentially, not closed).
        name: The top entry's name.
        follow: Archive what a final symlink points at (in the root), not the link.
    """
    parts = path_parts(path)
    if not parts:
        raise InvalidArgument("cp of the whole root: name a path inside it")
    top = name or parts[-1]
    pfd = _open(root_fd, parts[:-1], os.O_PATH | os.O_DIRECTORY, path)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        try:
            try:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound(f"no such file or directory: {path}") from None
            if stat.S_ISLNK(st.st_mode) and follow:
                # The link's target (in the root), archived under the link's name.
                leaf = _open(root_fd, parts, os.O_PATH, path)
                try:
                    _add_fd(tar, leaf, top, os.fstat(leaf), {})
                finally:
                    os.close(leaf)
            else:
                _add(tar, pfd, parts[-1], top, st, {})
        finally:
            os.close(pfd)


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def _add(tar: tarfile.TarFile, pfd: int, entry: str, name: str, st: os.stat_result,
         links: dict[tuple[int, int], str]) -> None:
    """Add ``entry`` of directory ``pfd`` (never following a symlink) as ``name``."""
    if stat.S_ISLNK(st.st_mode):
        info = _info(name, st)
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(entry, dir_fd=pfd)
        tar.addfile(info)
        return
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        info = _info(name, st)
        info.type = {stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE,
                     stat.S_IFIFO: tarfile.FIFOTYPE}.get(stat.S_IFMT(st.st_mode), b"")
        if not info.type:
            return  # a socket: tar has no word for it
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        tar.addfile(info)
        return
    flags = (_DIR if stat.S_ISDIR(st.st_mode) else os.O_RDONLY | os.O_CLOEXEC) | os.O_NOFOLLOW
    fd = os.open(entry, flags, dir_fd=pfd)
    try:
        _add_fd(tar, fd, name, os.fstat(fd), links)
    finally:
        os.close(fd)


def _add_fd(tar: tarfile.TarFile, fd: int, name: str, st: os.stat_result,
            links: dict[tuple[int, int], str]) -> None:
    """Add the open file or directory ``fd`` as ``name`` (directories recursively)."""
    info = _info(name, st)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        dfd = os.open(".", _DIR, dir_fd=fd) if _is_path_fd(fd) else fd
        try:
            for child in sorted(os.listdir(dfd)):
                _add(tar, dfd, child, f"{name}/{child}",
                     os.stat(child, dir_fd=dfd, follow_symlinks=False), links)
        finally:
            if dfd != fd:
                os.close(dfd)
        return
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{name}: not a file or directory")
    if st.st_nlink > 1:
        first = links.setdefault((st.st_dev, st.st_ino), name)
        if first != name:
            info.type, info.linkname = tarfile.LNKTYPE, first
            tar.addfile(info)
            return
    info.size = st.st_size
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC) if _is_path_fd(fd) else fd
    try:
        with os.fdopen(os.dup(rfd), "rb") as handle:
            tar.addfile(info, handle)
    finally:
        if rfd != fd:
            os.close(rfd)


def _is_path_fd(fd: int) -> bool:
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH)


# -- in: a tar into a directory -----------------------------------------------------------


def extract_tar(root_fd: int, dest: str, stream: Readable,
                rename: tuple[str, str] | None = None) -> int:
    """Unpack the tar ``stream`` into directory ``dest`` of the root; the entries made.

    ``rename`` is ``(old, new)``: entries under the top-level name ``old`` land
    under ``new`` instead (``cp CTR:/etc/hosts ./copy``).

    Raises:
        NotFound: ``dest`` does not exist.
        InvalidArgument: ``dest`` is no directory or climbs out; the stream is no
            tar; an entry climbs out of ``dest`` or would replace a directory.
    """
    base = path_parts(dest, "destination")
    os.close(_open(root_fd, base, os.O_PATH | os.O_DIRECTORY, dest))  # exists, is a directory
    is_root = os.geteuid() == 0
    dirs: list[tuple[list[str], tarfile.TarInfo]] = []
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                inner = path_parts(member.name, "archive entry")
                if rename is not None and inner and inner[0] == rename[0]:
                    inner[0] = rename[1]
                if member.islnk() and rename is not None:
                    linked = path_parts(member.linkname, "hardlink target")
                    if linked and linked[0] == rename[0]:
                        member.linkname = "/".join([rename[1], *linked[1:]])
                parts = base + inner
                if len(parts) == len(base):
                    continue  # the destination itself ("./")
                pfd = _open(root_fd, parts[:-1], os.O_PATH | os.O_DIRECTORY,
                            "/" + "/".join(parts[:-1]))
                try:
                    _make(tar, member, pfd, parts[-1], root_fd, base, is_root)
                finally:
                    os.close(pfd)
                if member.isdir():
                    dirs.append((parts, member))
                count += 1
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from None
    for parts, member in reversed(dirs):  # children changed their parents' times
        fd = _open(root_fd, parts, os.O_PATH | os.O_DIRECTORY, "/".join(parts))
        try:
            os.utime(f"/proc/self/fd/{fd}", (member.mtime, member.mtime))
        finally:
            os.close(fd)
    return count


def _make(tar: tarfile.TarFile, member: tarfile.TarInfo, pfd: int, name: str,
          root_fd: int, base: list[str], is_root: bool) -> None:
    """Create ``name`` in directory ``pfd`` as ``member`` says; never through a symlink."""
    try:
        existing: os.stat_result | None = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        if stat.S_ISDIR(existing.st_mode):
            raise InvalidArgument(f"cannot replace directory {member.name!r} by a non-directory")
        os.unlink(name, dir_fd=pfd)
    if member.isdir():
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=pfd)
    elif member.isreg():
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            assert source is not None
            while chunk := source.read(_CHUNK):
                out.write(chunk)
    elif member.issym():
        os.symlink(member.linkname, name, dir_fd=pfd)
    elif member.islnk():
        target = base + path_parts(member.linkname, "hardlink target")
        tfd = _open(root_fd, target[:-1], os.O_PATH | os.O_DIRECTORY, member.linkname)
        try:
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
    else:
        return
    if member.issym():
        if is_root:
            os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        with contextlib.suppress(OSError):  # some file systems keep no symlink times
            os.utime(name, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)
        return
    # Through a descriptor of what was just made: a process in the container that swapped
    # it for a symlink meanwhile gets the symlink refused, not its target changed.
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{member.name!r} was replaced by a symlink while copying")
        made = f"/proc/self/fd/{fd}"
        if is_root:
            os.chown(made, member.uid, member.gid)
        os.chmod(made, member.mode)  # after chown, which clears setuid
        os.utime(made, (member.mtime, member.mtime))
    finally:
        os.close(fd)
