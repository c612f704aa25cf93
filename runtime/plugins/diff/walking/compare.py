"""Compute the OCI layer that turns one directory tree into another (containerd's walking differ).

:func:`write_diff` double-walks ``lower`` and ``upper`` (two plain trees, e.g. the read-only
mounts of a parent snapshot and of the merged child) in byte order of names, depth first, and
writes a PAX tar of the changes: added or changed entries with their metadata (mode, owner,
mtime in whole seconds, xattrs, symlink targets, device numbers, hardlinks), ``.wh.<name>`` for
deletions, and unchanged parent directories ahead of changed children. The tar is hashed (the
diffID), compressed, hashed again (the blob digest) and written to ``out`` in one pass.

"Changed" follows containerd's continuity ``sameFile``: type, mode, owner, device number and
xattrs must match; non-directories must also have the same size and mtime, and when both
mtimes lack a sub-second part (so they may have been truncated) the contents are compared.

:func:`write_diff_from_overlay_upper` reads an overlayfs upperdir directly instead: every entry
in it is a change, 0:0 character devices are whiteouts and ``trusted.overlay.opaque=y`` marks
an opaque directory.
"""

from __future__ import annotations

import copy
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import msgspec

from runtime.core.errors import InvalidArgument, MoorageError, NotImplementedYet

try:  # same choice as apply: ISA-L deflate is several times faster than zlib
    from isal import isal_zlib as _gz

    _GZIP_LEVEL = 2  # ISA-L's default; about zlib -6's ratio at a fraction of the time
except ImportError:  # pragma: no cover - depends on the environment
    import zlib as _gz  # type: ignore[no-redef]

    _GZIP_LEVEL = 6  # Go's and zlib's default

__all__ = ["DiffResult", "write_diff", "write_diff_from_overlay_upper"]

_MEDIA_TYPES: Final = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
_CHUNK = 1 << 20
_WH = ".wh."
_WH_OPAQUE = ".wh..wh..opq"
_OVERLAY_XATTR = "trusted.overlay."
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DiffResult(msgspec.Struct, frozen=True):
    """The layer blob :func:`write_diff` wrote."""

    diff_id: str
    """``sha256:<hex>`` of the uncompressed tar."""
    digest: str
    """``sha256:<hex>`` of the bytes written to ``out`` (the blob's content address)."""
    size: int
    """Number of bytes written to ``out``."""
    media_type: str
    """OCI layer media type matching the compression."""


def write_diff(lower: Path, upper: Path, out: BinaryIO, *, compression: str = "gzip") -> DiffResult:
    """Write the layer that turns ``lower`` into ``upper`` to ``out``.

    Args:
        lower: The parent tree (may be an empty directory for a base layer).
        upper: The child tree, as a plain directory (the merged view, not an upperdir).
        out: Where the compressed blob goes; written sequentially, not closed.
        compression: ``"gzip"`` (default), ``"zstd"`` or ``"none"``.

    Returns:
        The diffID, digest, size and media type of the blob.

    Raises:
        InvalidArgument: Unknown compression, or ``lower``/``upper`` is not a directory.
    """
    _check_dir(lower)
    _check_dir(upper)
    with _LayerWriter(out, compression) as writer:
        _TreeDiff(writer).walk(lower, upper, "")
    return writer.result


def write_diff_from_overlay_upper(
    upper: Path, lowers: list[Path], out: BinaryIO, *, compression: str = "gzip"
) -> DiffResult:
    """Write the layer recorded in an overlayfs upperdir to ``out``.

    Everything in ``upper`` is a change. A 0:0 character device becomes ``.wh.<name>`` (dropped
    when no lower has ``<name>``, since it then hides nothing) and a directory with
    ``trusted.overlay.opaque=y`` gets a ``.wh..wh..opq`` entry.

    Args:
        upper: The overlay upperdir (not mounted over, or the mount quiesced).
        lowers: The lowerdirs, top first; only consulted to drop pointless whiteouts.
        out: Where the compressed blob goes.
        compression: ``"gzip"`` (default), ``"zstd"`` or ``"none"``.

    Returns:
        The diffID, digest, size and media type of the blob.

    Raises:
        InvalidArgument: Unknown compression or a missing directory.
        NotImplementedYet: The upperdir uses ``metacopy`` or ``redirect_dir`` (its files or
            directories then live partly in the lowers).
    """
    _check_dir(upper)
    with _LayerWriter(out, compression) as writer:
        _UpperDiff(writer, lowers).walk(upper, "")
    return writer.result


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise InvalidArgument(f"diff source {str(path)!r} is not a directory")


# --------------------------------------------------------------------------- output


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _LayerWriter:
    """File object for tarfile: hashes the tar, compresses, hashes and writes the blob."""

    def __init__(self, out: BinaryIO, compression: str) -> None:
        if compression not in _MEDIA_TYPES:
            raise InvalidArgument(
                f"unknown layer compression {compression!r}; use gzip, zstd or none"
            )
        self._out = out
        self._media_type = _MEDIA_TYPES[compression]
        self._comp: _Compressor | None = None
        if compression == "gzip":
            self._comp = _gz.compressobj(_GZIP_LEVEL, _gz.DEFLATED, 31)
        elif compression == "zstd":
            import zstandard  # only zstd layers pay for the import

            self._comp = zstandard.ZstdCompressor(level=3).compressobj()
        self._tar_hash, self._blob_hash = hashlib.sha256(), hashlib.sha256()
        self._tar_size = self._blob_size = 0
        self._pending = bytearray()  # tarfile writes 512-byte headers; batch them
        self.result: DiffResult
        self.tar = tarfile.TarFile(
            fileobj=self,  # type: ignore[arg-type]  # duck-typed: write/tell/close
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            copybufsize=_CHUNK,
        )

    def __enter__(self) -> _LayerWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            return
        self.tar.close()  # end-of-archive blocks, through write()
        self._flush()
        if self._comp is not None:
            self._emit(self._comp.flush())
        self.result = DiffResult(
            diff_id=f"sha256:{self._tar_hash.hexdigest()}",
            digest=f"sha256:{self._blob_hash.hexdigest()}",
            size=self._blob_size,
            media_type=self._media_type,
        )

    def write(self, data: bytes) -> int:
        self._pending += data
        if len(self._pending) >= _CHUNK:
            self._flush()
        return len(data)

    def tell(self) -> int:
        return self._tar_size + len(self._pending)

    def close(self) -> None:
        """Nothing to do: ``out`` belongs to the caller."""

    def _flush(self) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        self._tar_hash.update(data)
        self._tar_size += len(data)
        self._emit(self._comp.compress(data) if self._comp is not None else data)

    def _emit(self, blob: bytes) -> None:
        if blob:
            self._blob_hash.update(blob)
            self._blob_size += len(blob)
            self._out.write(blob)


# --------------------------------------------------------------------------- walking


def _names(path: Path) -> list[str]:
    # Byte order of the raw names, as Go's filepath.Walk (and so containerd) sorts them.
    return sorted(os.listdir(path), key=os.fsencode)


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError:  # no xattr support on this file system
        return {}
    out = {}
    for key in keys:
        if not key.startswith(_OVERLAY_XATTR):
            try:
                out[key] = os.getxattr(path, key, follow_symlinks=False)
            except OSError:  # removed meanwhile, or not readable for this type
                continue
    return out


def _same_content(a: Path, b: Path) -> bool:
    with a.open("rb", buffering=0) as fa, b.open("rb", buffering=0) as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _same(lst: os.stat_result, ust: os.stat_result, lpath: Path, upath: Path) -> bool:
    """Whether ``upath`` is unchanged from ``lpath`` (continuity's ``sameFile``)."""
    if (lst.st_dev, lst.st_ino) == (ust.st_dev, ust.st_ino):
        return True
    if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
        return False
    if (stat.S_ISCHR(ust.st_mode) or stat.S_ISBLK(ust.st_mode)) and lst.st_rdev != ust.st_rdev:
        return False
    if _xattrs(lpath) != _xattrs(upath):
        return False
    if stat.S_ISDIR(ust.st_mode):
        return True  # a directory's own mtime changes with its entries; they are walked
    if lst.st_size != ust.st_size:
        return False
    lsec, lns = divmod(lst.st_mtime_ns, 1_000_000_000)
    usec, uns = divmod(ust.st_mtime_ns, 1_000_000_000)
    if lsec != usec or lns != uns:
        return False
    if lns == 0:
        # Whole-second times may have been truncated (by tar), so equal times prove nothing.
        if stat.S_ISLNK(ust.st_mode):
            return os.readlink(lpath) == os.readlink(upath)
        if stat.S_ISREG(ust.st_mode) and ust.st_size:
            return _same_content(lpath, upath)
    return True


class _Emitter:
    """Turns file system entries into tar members, parents first, hardlinks deduplicated."""

    def __init__(self, writer: _LayerWriter) -> None:
        self._tar = writer.tar
        self._root: Path | None = None
        self._emitted_dirs: set[str] = set()
        # Hardlinks: the first path written for an inode, and unchanged paths of inodes not
        # written yet, which must become links once it is (containerd's inodeSrc/inodeRefs).
        self._inodes: dict[tuple[int, int], str] = {}
        self._pending: dict[tuple[int, int], list[str]] = {}

    def parents(self, rel: str) -> None:
        """Emit the directories above ``rel`` that are not in the tar yet (as containerd)."""
        assert self._root is not None
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix not in self._emitted_dirs:
                path = self._root / prefix
                self.entry(prefix, path, os.lstat(path), with_parents=False)

    def entry(self, rel: str, path: Path, st: os.stat_result, *, with_parents: bool = True) -> None:
        if stat.S_ISSOCK(st.st_mode):
            return  # sockets do not survive in a layer (nor does containerd keep them)
        if with_parents:
            self.parents(rel)
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""  # numeric ids only: host names mean nothing in an image
        info.mtime = st.st_mtime_ns // 1_000_000_000  # whole seconds, as containerd writes
        xattrs = _xattrs(path)
        if xattrs:
            info.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                for k, v in sorted(xattrs.items())
            }
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            info.type = tarfile.DIRTYPE
            self._emitted_dirs.add(rel)
            self._tar.addfile(info)
        elif fmt == stat.S_IFLNK:
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            self._tar.addfile(info)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
            info.type = {
                stat.S_IFCHR: tarfile.CHRTYPE,
                stat.S_IFBLK: tarfile.BLKTYPE,
                stat.S_IFIFO: tarfile.FIFOTYPE,
            }[fmt]
            if fmt != stat.S_IFIFO:
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._tar.addfile(info)
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._inodes:
                info.type, info.linkname = tarfile.LNKTYPE, self._inodes[key]
                self._tar.addfile(info)
                return
            if st.st_nlink > 1:
                self._inodes[key] = rel
            info.size = st.st_size
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb", buffering=0) as f:
                self._tar.addfile(info, f)
            for other in self._pending.pop(key, []):
                self.parents(other)
                link = copy.copy(info)
                link.name, link.type, link.linkname, link.size = other, tarfile.LNKTYPE, rel, 0
                self._tar.addfile(link)
        else:
            raise MoorageError(f"diff: {rel!r} has an unknown file type {fmt:o}")

    def unchanged(self, rel: str, path: Path, st: os.stat_result) -> None:
        """Note an unchanged path: if its inode is (or will be) rewritten, link it to that."""
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return
        key = (st.st_dev, st.st_ino)
        if key in self._inodes:
            self.entry(rel, path, st)  # written as a hardlink to the rewritten path
        else:
            self._pending.setdefault(key, []).append(rel)

    def whiteout(self, rel_dir: str, name: str) -> None:
        rel = f"{rel_dir}{_WH}{name}"
        self.parents(rel)
        info = tarfile.TarInfo(rel)
        # containerd (since 2.0) writes whiteouts as empty files dated at the epoch.
        info.mode, info.mtime, info.uname, info.gname = 0, 0, "", ""
        self._tar.addfile(info)


class _TreeDiff(_Emitter):
    def walk(self, lower: Path | None, upper: Path, rel: str) -> None:
        if self._root is None:
            self._root = upper
        unames = _names(upper)
        lnames = _names(lower) if lower is not None else []
        uset, lset = set(unames), set(lnames)
        for name in sorted(uset | lset, key=os.fsencode):
            child = f"{rel}{name}"
            if name not in uset:
                self.whiteout(rel, name)
                continue
            upath = upper / name
            ust = os.lstat(upath)
            lpath = lower / name if lower is not None and name in lset else None
            lst = os.lstat(lpath) if lpath is not None else None
            if lst is None or lpath is None or not _same(lst, ust, lpath, upath):
                self.entry(child, upath, ust)
            else:
                self.unchanged(child, upath, ust)
            if stat.S_ISDIR(ust.st_mode):
                below = lpath if lst is not None and stat.S_ISDIR(lst.st_mode) else None
                self.walk(below, upath, child + "/")


class _UpperDiff(_Emitter):
    def __init__(self, writer: _LayerWriter, lowers: list[Path]) -> None:
        super().__init__(writer)
        self._lowers = lowers

    def walk(self, upper: Path, rel: str) -> None:
        if self._root is None:
            self._root = upper
        for name in _names(upper):
            child = f"{rel}{name}"
            upath = upper / name
            ust = os.lstat(upath)
            if stat.S_ISCHR(ust.st_mode) and ust.st_rdev == 0:
                if self._in_lowers(child):
                    self.whiteout(rel, name)
                continue
            for key in ("trusted.overlay.metacopy", "trusted.overlay.redirect"):
                if _has_xattr(upath, key):
                    raise NotImplementedYet(
                        f"diff: {child!r} carries {key}; diff the merged mount instead"
                    )
            self.entry(child, upath, ust)
            if stat.S_ISDIR(ust.st_mode):
                if _has_xattr(upath, "trusted.overlay.opaque", b"y"):
                    info = tarfile.TarInfo(f"{child}/{_WH_OPAQUE}")
                    info.mode, info.mtime, info.uname, info.gname = 0, 0, "", ""
                    self._tar.addfile(info)
                self.walk(upath, child + "/")

    def _in_lowers(self, rel: str) -> bool:
        """Whether any lower has ``rel``, resolved without following any symlink."""
        parts = rel.split("/")
        return any(_lexists_nofollow(lower, parts) for lower in self._lowers)


def _has_xattr(path: Path, key: str, value: bytes | None = None) -> bool:
    try:
        got = os.getxattr(path, key, follow_symlinks=False)
    except OSError:
        return False
    return value is None or got == value


def _lexists_nofollow(root: Path, parts: list[str]) -> bool:
    """``lexists(root/parts)`` where no component may be a symlink (none leads elsewhere)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for comp in parts[:-1]:
            nxt = os.open(comp, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.lstat(parts[-1], dir_fd=fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
