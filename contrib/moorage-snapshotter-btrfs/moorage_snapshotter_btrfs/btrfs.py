"""The ``btrfs`` commands the snapshotter uses, with their failures turned into Moorage errors.

Every function blocks (it runs ``btrfs-progs``); call them from a worker thread.
The commands are run with ``LC_ALL=C`` so that their messages can be classified.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from runtime.core.errors import MoorageError, NotImplementedYet, ResourceExhausted

__all__ = [
    "BTRFS_SUPER_MAGIC",
    "create_subvolume",
    "delete_subvolume",
    "delete_tree",
    "filesystem_type",
    "is_subvolume",
    "set_read_only",
    "snapshot_subvolume",
]

log = logging.getLogger("moorage.snapshotter.btrfs")

#: ``statfs(2)`` magic of btrfs; ``stat -f -c %T`` names it ``btrfs``.
BTRFS_SUPER_MAGIC = 0x9123683E

# The root directory of every subvolume has this inode number
# (BTRFS_FIRST_FREE_OBJECTID): how to tell a subvolume from a plain directory
# without asking btrfs-progs.
_SUBVOLUME_ROOT_INODE = 256


def _btrfs(*args: str) -> None:
    """Run ``btrfs ARGS``; raise a Moorage error carrying its message on failure."""
    try:
        result = subprocess.run(
            ["btrfs", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError as exc:
        raise NotImplementedYet("btrfs-progs is not installed (no btrfs command)") from exc
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip()
        if "No space left" in message:
            raise ResourceExhausted(f"btrfs {' '.join(args)}: {message}")
        raise MoorageError(f"btrfs {' '.join(args)} failed: {message}")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (or its nearest existing ancestor).

    Returns ``stat -f -c %T``'s name: ``btrfs``, ``tmpfs``, ``ext2/ext3``...
    The nearest ancestor is asked so that a root yet to be created can be
    checked before anything is written.
    """
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    result = subprocess.run(
        ["stat", "-f", "-c", "%T", str(probe)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    if result.returncode != 0:
        raise MoorageError(f"stat -f {probe} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def is_subvolume(path: Path) -> bool:
    """True when ``path`` is the root directory of a btrfs subvolume."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == _SUBVOLUME_ROOT_INODE and os.path.isdir(path)


def create_subvolume(path: Path) -> None:
    """``btrfs subvolume create PATH``: a new, empty subvolume (its root 0755)."""
    _btrfs("subvolume", "create", str(path))
    # The new root's mode follows the daemon's umask; snapshots start at 0755.
    os.chmod(path, 0o755)


def snapshot_subvolume(source: Path, target: Path, *, read_only: bool = False) -> None:
    """``btrfs subvolume snapshot [-r] SOURCE TARGET``: a copy-on-write clone of ``source``."""
    _btrfs("subvolume", "snapshot", *(["-r"] if read_only else []), str(source), str(target))


def set_read_only(path: Path) -> None:
    """Make the subvolume ``path`` read-only (``btrfs property set -ts PATH ro true``)."""
    _btrfs("property", "set", "-ts", str(path), "ro", "true")


def delete_subvolume(path: Path) -> None:
    """``btrfs subvolume delete PATH``; read-only subvolumes included.

    The space is reclaimed by the kernel's cleaner thread after the call
    returns, which is what makes removing a large layer cheap.
    """
    _btrfs("subvolume", "delete", str(path))


def delete_tree(path: Path) -> None:
    """Delete a snapshot directory whose ``fs`` may be a subvolume; best effort, never raises.

    ``rm -rf`` cannot do it: a read-only subvolume refuses unlinks, and walking
    a large tree is what subvolume deletion avoids. Failures are logged; the
    directory is then left for the next cleanup.
    """
    fs = path / "fs"
    if is_subvolume(fs):
        try:
            delete_subvolume(fs)
        except MoorageError as exc:
            log.warning("cannot delete subvolume %s: %s", fs, exc)
            return
    shutil.rmtree(path, ignore_errors=True)
