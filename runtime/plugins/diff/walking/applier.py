"""Apply tar members to a directory through fds, never following a path out of it.

Every path is resolved component by component from an fd on the target, with
``O_NOFOLLOW``; a symlink met on the way is followed by hand, rooted at the target, and
refused if it climbs above it. The last component is never followed: it is replaced or
merged. Whiteouts (``.wh.``) and opaque directories become deletions, or overlayfs'
markers when the target is an overlay upper directory.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import tarfile
from collections.abc import Callable

from runtime.core.errors import (
    InvalidArgument,
    MoorageError,
    PermissionDenied,
    ResourceExhausted,
)
from runtime.pkg.archive.decode import OUT_CHUNK
from runtime.pkg.archive.members import clean_path, member_times, member_xattrs
from runtime.pkg.archive.tar import Feed

__all__ = [
    "Applier",
]


_MAX_CACHED_DIRS = 512  # open directory fds kept between entries
_MAX_SYMLINK_HOPS = 40  # same limit as the kernel's ELOOP

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

_WH = ".wh."
_WH_META = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"
# Set on an opaque directory when the target is an overlay upper directory.
_OPAQUE_XATTR = "trusted.overlay.opaque"


class _Missing(LookupError):
    """A path component does not exist and was not to be created."""


def _os_error(entry: str, exc: OSError) -> MoorageError:
    """Translate an OSError met while applying ``entry`` into the error vocabulary."""
    msg = f"layer entry {entry!r}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(msg)
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(msg)
    if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR, errno.EISDIR,
                     errno.ELOOP, errno.EEXIST, errno.ENOENT, errno.EMLINK):  # fmt: skip
        return InvalidArgument(msg)
    return MoorageError(msg)


def _umask() -> int | None:
    """The process's umask, read without changing it (``None`` if the kernel does not say).

    Read once per layer: the daemon changes its umask only while binding its API socket,
    before it takes any request.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class Applier:
    """Applies tar members relative to an fd on the target; one instance per layer."""

    def __init__(self, root_fd: int, *, overlay_upper: bool) -> None:
        self._root = root_fd
        self._overlay = overlay_upper
        # Open fds of directories, keyed by their real path: components with no symlink in
        # them. Every prefix of a cached path is cached too until the cache is reset, which
        # only happens between entries.
        self._dirs: dict[tuple[str, ...], int] = {(): root_fd}
        # Real paths written by this layer (and their parents): an opaque marker keeps them.
        self._written: set[tuple[str, ...]] = set()
        self._dir_times: list[tuple[tuple[str, ...], int, int]] = []
        self._as_root = os.geteuid() == 0
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._umask = _umask()
        # Per directory (real path): the group a file created in it gets. Only a setgid
        # directory gives its own; kept so that most files need no fchown at all.
        self._new_gids: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        """Close the cached directory fds."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    # ---- entry dispatch

    def apply(self, member: tarfile.TarInfo, tf: tarfile.TarFile, feed: Feed) -> None:
        """Apply one member; its file data is read from ``feed``."""
        name = member.name
        if len(self._dirs) > _MAX_CACHED_DIRS:
            self._reset_cache()
        try:
            parts = clean_path(name, name)
            if not parts:
                return  # the root itself: containerd ignores it too
            base = parts[-1]
            if base.startswith(_WH):
                self._whiteout(member, parts)
                return
            real, pfd = self._walk(parts[:-1], name, create=True, follow=True)
            path = (*real, base)
            if member.isreg():
                self._file(member, pfd, base, path, tf, feed)
            elif member.isdir():
                self._dir(member, pfd, base, path)
            elif member.issym():
                self._symlink(member, pfd, base, path)
            elif member.islnk():
                self._hardlink(member, pfd, base, path)
            elif member.ischr() or member.isblk() or member.isfifo():
                self._node(member, pfd, base, path)
            else:
                raise InvalidArgument(f"layer entry {name!r}: unsupported tar type {member.type!r}")
            self._mark_written(path)
        except MoorageError:
            raise
        except OSError as exc:
            raise _os_error(name, exc) from exc
        except ValueError as exc:  # e.g. a NUL byte in a pax path
            raise InvalidArgument(f"layer entry {name!r}: {exc}") from exc

    def finish(self) -> None:
        """Set directory times, now that nothing more is created inside them."""
        for real, atime, mtime in self._dir_times:
            if len(self._dirs) > _MAX_CACHED_DIRS:
                self._reset_cache()
            entry = "/".join(real)
            try:
                _, fd = self._walk(real, entry, create=False, follow=False)
                os.utime(fd, ns=(atime, mtime))
            except (_Missing, InvalidArgument):
                continue  # removed or replaced by a later entry of the same layer
            except OSError as exc:
                raise _os_error(entry, exc) from exc

    # ---- path resolution

    def _walk(
        self, parts: tuple[str, ...], entry: str, *, create: bool, follow: bool
    ) -> tuple[tuple[str, ...], int]:
        """Resolve a directory path inside the target; return its real path and an open fd.

        Each component is opened with ``O_NOFOLLOW`` relative to its parent's fd. A symlink
        is followed by hand when ``follow`` (absolute targets restart at the target's root,
        ``..`` may not climb above it) and refused otherwise. Missing directories are
        created (mode 0755, like containerd) when ``create``, else :class:`_Missing`.
        """
        fd = self._dirs.get(parts)
        if fd is not None:
            return parts, fd
        real: tuple[str, ...] = ()
        fd = self._root
        todo = list(reversed(parts))
        hops = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if not real:
                    raise InvalidArgument(
                        f"layer entry {entry!r}: a symlink in its path leads out of the target"
                    )
                real = real[:-1]
                fd = self._dirs[real]
                continue
            key = (*real, comp)
            child = self._dirs.get(key)
            if child is None:
                try:
                    child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Missing("/".join(key)) from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(child, 0o755)  # whatever the daemon's umask
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.lstat(comp, dir_fd=fd)
                    where = "/".join(key)
                    if not stat.S_ISLNK(st.st_mode):
                        raise InvalidArgument(
                            f"layer entry {entry!r}: {where!r} is not a directory"
                        ) from None
                    if not follow:
                        raise InvalidArgument(
                            f"layer entry {entry!r}: {where!r} is a symlink and may not be "
                            "followed here"
                        ) from None
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise InvalidArgument(
                            f"layer entry {entry!r}: too many levels of symlinks"
                        ) from None
                    link = os.readlink(comp, dir_fd=fd)
                    if link.startswith("/"):
                        # Absolute links mean the container's root, i.e. the target.
                        real, fd = (), self._root
                    todo.extend(reversed(link.split("/")))
                    continue
                self._dirs[key] = child
            real, fd = key, child
        return real, fd

    def _reset_cache(self) -> None:
        for key, fd in self._dirs.items():
            if key:
                os.close(fd)
        self._dirs = {(): self._root}
        self._new_gids.clear()

    def _forget(self, gone: tuple[str, ...]) -> None:
        """Drop cached fds at or below a directory that was just removed."""
        n = len(gone)
        for key in [k for k in self._dirs if k[:n] == gone]:
            os.close(self._dirs.pop(key))
        for key in [k for k in self._new_gids if k[:n] == gone]:
            del self._new_gids[key]

    def _remove(self, pfd: int, base: str, path: tuple[str, ...]) -> None:
        """Remove ``base`` (anything, directories recursively, never following symlinks)."""
        st = os.lstat(base, dir_fd=pfd)
        if stat.S_ISDIR(st.st_mode):
            self._forget(path)
            shutil.rmtree(base, dir_fd=pfd)  # the fd-based variant: safe against symlinks
        else:
            os.unlink(base, dir_fd=pfd)

    def _replace(
        self, pfd: int, base: str, path: tuple[str, ...], make: Callable[[], object]
    ) -> None:
        """Run ``make`` (which creates ``base``), replacing whatever was there."""
        try:
            make()
        except FileExistsError:
            self._remove(pfd, base, path)
            make()

    def _mark_written(self, path: tuple[str, ...]) -> None:
        written = self._written
        while path and path not in written:
            written.add(path)
            path = path[:-1]

    # ---- metadata

    def _fd_meta(self, fd: int, member: tarfile.TarInfo, *, times: bool = True) -> None:
        if self._as_root:
            os.fchown(fd, member.uid, member.gid)
        for key, value in member_xattrs(member):
            self._setxattr(member, key, functools.partial(os.setxattr, fd, key, value))
        # After chown, which clears setuid/setgid.
        os.fchmod(fd, member.mode & 0o7777)
        if times:
            os.utime(fd, ns=member_times(member))

    def _file_meta(
        self, fd: int, member: tarfile.TarInfo, parent: tuple[str, ...], pfd: int
    ) -> None:
        """:meth:`_fd_meta` for a file just created with ``member.mode & 0o777``.

        Owner and mode are set only where creation did not already give the right
        ones: a new file belongs to us (and to a setgid parent's group), and its
        mode is the one asked for less the umask. That saves two of a file's six
        system calls for the usual root-owned files.
        """
        gid = self._new_gids.get(parent)
        if gid is None:
            st = os.fstat(pfd)
            gid = st.st_gid if st.st_mode & stat.S_ISGID else self._gid
            self._new_gids[parent] = gid
        if self._as_root and (member.uid != self._uid or member.gid != gid):
            os.fchown(fd, member.uid, member.gid)
        for key, value in member_xattrs(member):
            self._setxattr(member, key, functools.partial(os.setxattr, fd, key, value))
        mode = member.mode & 0o7777
        if self._umask is None or mode != mode & 0o777 & ~self._umask:
            os.fchmod(fd, mode)
        os.utime(fd, ns=member_times(member))

    def _path_meta(self, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        """Metadata for what has no fd of its own to write through (symlinks, nodes, links)."""
        if self._as_root:
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        xattrs = member_xattrs(member)
        if xattrs:
            # The verified parent fd plus a name that is not followed: no other way to reach
            # lsetxattr relative to a directory fd.
            where = f"/proc/self/fd/{pfd}/{base}"
            for key, value in xattrs:
                set_it = functools.partial(os.setxattr, where, key, value, follow_symlinks=False)
                self._setxattr(member, key, set_it)
        # chmod without following a symlink: pin the inode with O_PATH, skip symlinks
        # (Linux has no symlink modes), chmod through /proc as glibc's lchmod does.
        pinned = os.open(base, _PATH_FLAGS, dir_fd=pfd)
        try:
            if not stat.S_ISLNK(os.fstat(pinned).st_mode):
                os.chmod(f"/proc/self/fd/{pinned}", member.mode & 0o7777)
        finally:
            os.close(pinned)
        os.utime(base, ns=member_times(member), dir_fd=pfd, follow_symlinks=False)

    @staticmethod
    def _setxattr(member: tarfile.TarInfo, key: str, apply: Callable[[], None]) -> None:
        try:
            apply()
        except OSError as exc:
            # Same leniency as containerd: a file system without xattrs, or user.* on a
            # symlink or device, loses the attribute rather than failing the layer.
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            if (
                exc.errno == errno.EPERM
                and key.startswith("user.")
                and not (member.isreg() or member.isdir())
            ):
                return
            raise

    # ---- entry kinds

    def _file(
        self,
        member: tarfile.TarInfo,
        pfd: int,
        base: str,
        path: tuple[str, ...],
        tf: tarfile.TarFile,
        feed: Feed,
    ) -> None:
        holder: list[int] = []
        # Created with its permission bits (as containerd does) rather than 0600 and a
        # chmod: the target is the daemon's own directory, and most files then need no
        # fchmod. Special bits wait for _file_meta (a chown would clear them).
        mode = member.mode & 0o777
        self._replace(
            pfd, base, path, lambda: holder.append(os.open(base, _FILE_FLAGS, mode, dir_fd=pfd))
        )
        fd = holder[0]
        try:
            if member.sparse is not None:
                # Rare (GNU sparse); tarfile knows the maps, so let it expand the holes.
                src = tf.extractfile(member)
                assert src is not None
                while chunk := src.read(OUT_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            else:
                feed.copy_to(fd, member.size, member.name)
            self._file_meta(fd, member, path[:-1], pfd)
        finally:
            os.close(fd)

    def _dir(self, member: tarfile.TarInfo, pfd: int, base: str, path: tuple[str, ...]) -> None:
        fd = self._dirs.get(path)
        if fd is None:
            try:
                os.mkdir(base, 0o700, dir_fd=pfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(base, dir_fd=pfd).st_mode):
                    self._remove(pfd, base, path)
                    os.mkdir(base, 0o700, dir_fd=pfd)
                # else: directory over directory merges; only the metadata changes.
            fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
            self._dirs[path] = fd
        self._fd_meta(fd, member, times=False)
        self._new_gids.pop(path, None)  # its group and setgid bit may have changed
        atime, mtime = member_times(member)
        self._dir_times.append((path, atime, mtime))

    def _symlink(self, member: tarfile.TarInfo, pfd: int, base: str, path: tuple[str, ...]) -> None:
        if not member.linkname:
            raise InvalidArgument(f"layer entry {member.name!r}: symlink with an empty target")
        self._replace(pfd, base, path, lambda: os.symlink(member.linkname, base, dir_fd=pfd))
        self._path_meta(pfd, base, member)

    def _hardlink(
        self, member: tarfile.TarInfo, pfd: int, base: str, path: tuple[str, ...]
    ) -> None:
        name = member.name
        tparts = clean_path(member.linkname, name, "hardlink target")
        if not tparts:
            raise InvalidArgument(f"layer entry {name!r}: hardlink to the root directory")
        try:
            # No symlink may be crossed: a link made through one could pin a file elsewhere.
            treal, tfd = self._walk(tparts[:-1], name, create=False, follow=False)
            tst = os.lstat(tparts[-1], dir_fd=tfd)
        except (_Missing, FileNotFoundError):
            raise InvalidArgument(
                f"layer entry {name!r}: hardlink target {member.linkname!r} does not exist"
            ) from None
        if stat.S_ISDIR(tst.st_mode):
            raise InvalidArgument(f"layer entry {name!r}: hardlink to a directory")
        if treal[: len(path)] == path:
            raise InvalidArgument(f"layer entry {name!r}: hardlink target lies inside the link")

        def make() -> None:
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

        try:
            make()
        except FileExistsError:
            if os.path.samestat(os.lstat(base, dir_fd=pfd), tst):
                return  # already this very inode
            self._remove(pfd, base, path)
            make()
        self._path_meta(pfd, base, member)

    def _node(self, member: tarfile.TarInfo, pfd: int, base: str, path: tuple[str, ...]) -> None:
        if member.ischr():
            kind = stat.S_IFCHR
        elif member.isblk():
            kind = stat.S_IFBLK
        else:
            kind = stat.S_IFIFO
        dev = os.makedev(member.devmajor, member.devminor) if kind != stat.S_IFIFO else 0
        self._replace(pfd, base, path, lambda: os.mknod(base, kind | 0o600, dev, dir_fd=pfd))
        self._path_meta(pfd, base, member)

    def _whiteout(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        name, base, dparts = member.name, parts[-1], parts[:-1]
        if base == _WH_OPAQUE:
            self._opaque(member, dparts)
            return
        if base.startswith(_WH_META):
            return  # other aufs metadata (e.g. .wh..wh.plnk): no meaning outside aufs
        victim = base[len(_WH) :]
        if victim in ("", ".", ".."):
            raise InvalidArgument(f"layer entry {name!r}: whiteout does not name a file")
        if self._overlay:
            dreal, dfd = self._walk(dparts, name, create=True, follow=True)
            path = (*dreal, victim)
            self._replace(
                dfd,
                victim,
                path,
                lambda: os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dfd),
            )
            if self._as_root:
                os.chown(victim, member.uid, member.gid, dir_fd=dfd, follow_symlinks=False)
            return
        try:
            dreal, dfd = self._walk(dparts, name, create=False, follow=True)
            self._remove(dfd, victim, (*dreal, victim))
        except (_Missing, FileNotFoundError):
            pass  # nothing there to delete

    def _opaque(self, member: tarfile.TarInfo, dparts: tuple[str, ...]) -> None:
        if self._overlay:
            _, dfd = self._walk(dparts, member.name, create=True, follow=True)
            os.setxattr(dfd, _OPAQUE_XATTR, b"y")
            return
        try:
            dreal, dfd = self._walk(dparts, member.name, create=False, follow=True)
        except _Missing:
            return
        # Entries the layer wrote before its marker stay; later ones are not there yet.
        for child in os.listdir(dfd):
            path = (*dreal, child)
            if path not in self._written:
                self._remove(dfd, child, path)
