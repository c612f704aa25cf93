"""The overlayfs snapshotter (it does not know it is a plugin; see :mod:`.plugin`).

Layout under ``root`` (the bookkeeping is :mod:`runtime.plugins.snapshots.backend`)::

    metadata.db
    snapshots/<id>/fs      the layer: upperdir while active, a lowerdir once committed
    snapshots/<id>/work    overlay's workdir (active snapshots only)

Mounts, as containerd builds them:

* no parent: a ``bind`` of ``fs``, ``rw`` for an active snapshot, ``ro`` for a view;
* active with parents: ``overlay`` with ``upperdir``, ``workdir`` and the
  parents' ``fs`` as ``lowerdir``, nearest first;
* view of one parent: a read-only ``bind`` of the parent's ``fs``;
* view of several: ``overlay`` with ``lowerdir`` only, read-only.

Paths are absolute. Ids are short integers so that a chain of 128 layers
usually fits the kernel's one-page limit on mount data; when it does not,
:func:`runtime.pkg.mount.mount_all` shortens the lowerdirs.
Whiteouts and opaque directories are plain overlayfs behaviour: deleting a
lower file in an active snapshot leaves a whiteout in its ``fs``, which hides
the file in every child once committed.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, final

from runtime.core.errors import NotImplementedYet
from runtime.pkg.mount import mount_all, unmount
from runtime.plugins.snapshots.api import Kind, Mount
from runtime.plugins.snapshots.backend import MetaStoreSnapshotter
from runtime.plugins.snapshots.record import Record

__all__ = ["OverlaySnapshotter", "check_supported", "probe_overlay", "remove_probe"]


@final
class OverlaySnapshotter(MetaStoreSnapshotter):
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` backed by overlayfs.

    Args:
        root: Directory owned by this snapshotter; must support overlay
            (see :func:`check_supported`).
        mount_options: Extra overlay options added to every overlay mount.
        sync_remove: Delete a removed snapshot's data before ``remove``
            returns; when false it is left for :meth:`cleanup` (faster removes,
            GC reclaims the space later).
    """

    def __init__(
        self, root: Path, *, mount_options: Sequence[str] = (), sync_remove: bool = True
    ) -> None:
        super().__init__(root, sync_remove=sync_remove)
        self._extra_options = list(mount_options)

    def populate(self, kind: Kind, new: Path, parents: Sequence[Path]) -> None:
        """Create the empty layer (and workdir when active) of a new snapshot."""
        fs = new / "fs"
        fs.mkdir()
        if kind is Kind.ACTIVE:
            (new / "work").mkdir(mode=0o711)
        if parents:
            # The merged root directory *is* the upper fs directory, so it must
            # carry the parent's root ownership and mode or the container's "/"
            # would change on every layer.
            st = (parents[0] / "fs").lstat()
            os.lchown(fs, st.st_uid, st.st_gid)
            os.chmod(fs, stat.S_IMODE(st.st_mode))
        else:
            os.chmod(fs, 0o755)  # not subject to the daemon's umask

    def mounts_of(self, record: Record, parents: Sequence[int]) -> list[Mount]:
        """The mounts of the module docstring: a bind without parents, else overlay."""
        if not parents:
            return super().mounts_of(record, parents)
        lowerdir = "lowerdir=" + ":".join(str(self.fs(p)) for p in parents)
        if record.kind is Kind.ACTIVE:
            options = [
                *_kernel_options(),
                *self._extra_options,
                f"workdir={self.snapshot_dir(record.id) / 'work'}",
                f"upperdir={self.fs(record.id)}",
                lowerdir,
            ]
            return [Mount(type="overlay", source="overlay", options=options)]
        if len(parents) == 1:
            # Overlay wants two lowers when there is no upper; one is just a bind.
            return [Mount(type="bind", source=str(self.fs(parents[0])), options=["ro", "rbind"])]
        options = ["ro", *_kernel_options(), *self._extra_options, lowerdir]
        return [Mount(type="overlay", source="overlay", options=options)]


@functools.cache
def _kernel_options() -> tuple[str, ...]:
    """Options containerd adds depending on the running kernel."""
    options: list[str] = []
    # With the index feature on, a lower layer shared by several mounts (ours
    # all are) can make later mounts fail; containerd turns it off likewise.
    if Path("/sys/module/overlay/parameters/index").exists():
        options.append("index=off")
    if _in_user_namespace():
        # Unprivileged overlay cannot write trusted.* xattrs.
        options.append("userxattr")
    return tuple(options)


def _in_user_namespace() -> bool:
    try:
        fields = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return fields != ["0", "0", "4294967295"]


@functools.cache
def _dirent64() -> Any:
    """``struct dirent64``; ctypes is imported by the probe alone (a fresh root, a new kernel)."""
    import ctypes

    class Dirent64(ctypes.Structure):
        _fields_ = [
            ("d_ino", ctypes.c_uint64),
            ("d_off", ctypes.c_int64),
            ("d_reclen", ctypes.c_ushort),
            ("d_type", ctypes.c_ubyte),
            ("d_name", ctypes.c_char * 256),
        ]

    return Dirent64


def _supports_d_type(directory: Path) -> bool:
    """Whether readdir on ``directory``'s filesystem reports file types.

    Python's ``os.scandir`` hides ``d_type`` (it falls back to ``stat``), so
    this reads the directory through libc's ``readdir64``, whose record layout
    is the same on every Linux architecture.
    """
    import ctypes

    (directory / "probe").touch()
    libc: Any = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir64.restype = ctypes.POINTER(_dirent64())
    libc.readdir64.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    handle = libc.opendir(str(directory).encode())
    if not handle:
        err = ctypes.get_errno()
        raise OSError(err, f"opendir {directory}: {os.strerror(err)}")
    try:
        while entry := libc.readdir64(handle):
            if entry.contents.d_name == b"probe":
                return bool(entry.contents.d_type != 0)  # 0 is DT_UNKNOWN
        return False
    finally:
        libc.closedir(handle)


def check_supported(root: Path) -> None:
    """Check that overlayfs works on ``root``'s filesystem (blocking; needs root).

    Tries what the snapshotter will do: ``d_type`` support on ``root``, then a
    real overlay mount with an upper and a lower directory under ``root``.

    Raises:
        NotImplementedYet: Overlay cannot be used here; the message says why.
    """
    remove_probe(probe_overlay(root))


def probe_overlay(root: Path) -> Path:
    """:func:`check_supported` up to its answer: the probe stays mounted for :func:`remove_probe`.

    The unmount and the removal of the probe's directories take longer than
    the probe itself; the plugin does them after it has started.

    Returns:
        The probe's directory under ``root`` (``check-*``), its overlay mounted on ``merged``.

    Raises:
        NotImplementedYet: Overlay cannot be used here (nothing is left behind).
    """
    import tempfile  # the probe runs once per kernel and filesystem: not at every start

    root.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix="check-", dir=root))
    try:
        if not _supports_d_type(probe):
            raise NotImplementedYet(f"{root} does not support d_type, overlayfs needs it")
        for name in ("lower", "upper", "work", "merged"):
            (probe / name).mkdir()
        (probe / "lower" / "file").touch()
        options = [f"lowerdir={probe / 'lower'}", f"upperdir={probe / 'upper'}",
                   f"workdir={probe / 'work'}"]  # fmt: skip
        try:
            mount_all([Mount(type="overlay", source="overlay", options=options)], probe / "merged")
        except OSError as exc:
            raise NotImplementedYet(f"overlayfs cannot be mounted on {root}: {exc}") from exc
        if not (probe / "merged" / "file").exists():
            raise NotImplementedYet(f"overlayfs on {root} does not show its lower layer")
    except BaseException:
        remove_probe(probe)
        raise
    return probe


def remove_probe(probe: Path) -> None:
    """Unmount and remove what :func:`probe_overlay` made (blocking)."""
    import shutil  # with tempfile, imported for the probe

    try:
        unmount(probe / "merged")
    finally:
        shutil.rmtree(probe, ignore_errors=True)
