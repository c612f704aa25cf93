"""Volume copy-up: a new, empty named volume takes the image's content at its path first.

Docker's rule: when a container mounts an empty volume over a directory its
image has, that directory's files (modes, ownership, times, symlinks) are
copied into the volume before the container starts, so ``-v data:/var/lib/x``
starts from what the image put in ``/var/lib/x``. A volume holding anything
is left alone, as is one mounted with ``nocopy``.

The spec names its volume mounts in :data:`VOLUMES_ANNOTATION` (a JSON object
``{destination: volume name}``, written by the client that resolved the names);
the runtime calls :func:`copy_up_volumes` once the root filesystem is mounted.
Paths inside the image are resolved as the container would see them: symlinks
are followed inside the root, never out of it.

Standard library only: the CLI imports the annotation's name.
"""

from __future__ import annotations

import json
import os
import stat

# typing.TYPE_CHECKING without importing typing (the CLI imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["VOLUMES_ANNOTATION", "copy_up_volumes", "resolve_in_root"]

#: Spec annotation: ``{destination: volume name}`` of the named volumes to copy up.
VOLUMES_ANNOTATION = "io.moorage.volumes"
_MAX_LINKS = 40


def resolve_in_root(root: str, path: str) -> str:
    """``path`` inside ``root`` with symlinks followed as if ``root`` were ``/``.

    A link pointing above the root stops at the root (as ``..`` at ``/`` does),
    so the result never leaves ``root``. The last component need not exist.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(f"too many symbolic links under {path!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _copy_metadata(source: os.stat_result, target: str) -> None:
    os.chown(target, source.st_uid, source.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(source.st_mode):
        os.chmod(target, stat.S_IMODE(source.st_mode))
    os.utime(target, ns=(source.st_atime_ns, source.st_mtime_ns), follow_symlinks=False)


def _copy_tree(source: str, target: str) -> None:
    """Copy the directory ``source`` into the existing directory ``target``, all kept.

    Nothing is followed: symlinks are copied as links, fifos are made anew,
    hard links become separate files. Device nodes are left out: a node an
    image chose would otherwise appear on the host, under the daemon's root.
    """
    with os.scandir(source) as entries:
        for entry in entries:
            src, dst = entry.path, os.path.join(target, entry.name)
            info = entry.stat(follow_symlinks=False)
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(dst, 0o700)
                _copy_tree(src, dst)
            elif stat.S_ISREG(mode):
                with open(src, "rb") as reader, open(
                        dst, "xb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW, 0o600)
                ) as writer:
                    while chunk := reader.read(1 << 20):
                        writer.write(chunk)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISFIFO(mode):
                os.mkfifo(dst, 0o600)
            else:
                continue  # devices (see above), sockets: nothing to copy
            _copy_metadata(info, dst)


def copy_up_volumes(spec: dict[str, Any], rootfs: str, annotation: str | None) -> list[str]:
    """Copy the image's content into each empty named volume of ``spec``; their names.

    Args:
        spec: The OCI spec (its ``mounts`` give each volume's host directory).
        rootfs: Where the container's root filesystem is mounted.
        annotation: The :data:`VOLUMES_ANNOTATION` value (``None``: nothing to do).
    """
    if not annotation:
        return []
    try:
        wanted: dict[str, str] = dict(json.loads(annotation))
    except (ValueError, TypeError):
        return []
    copied = []
    for mount in spec.get("mounts") or []:
        destination = str(mount.get("destination", ""))
        name = wanted.get(destination)
        source = str(mount.get("source", ""))
        if name is None or not os.path.isdir(source) or os.listdir(source):
            continue
        image_path = resolve_in_root(rootfs, destination)
        try:
            info = os.lstat(image_path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        _copy_tree(image_path, source)
        _copy_metadata(info, source)
        copied.append(name)
    return copied
