"""Resolve ``user[:group]`` against a container's own ``/etc/passwd`` and ``/etc/group``.

Lookups happen in the mounted root filesystem, never on the host, and symlinks
inside it are followed as if it were ``/`` (an image's ``/etc/passwd`` linking
to ``/../../host/file`` stays inside). The rules are containerd's ``WithUser``
and ``WithAdditionalGIDs``:

* ``name`` or ``uid``: the passwd entry gives uid and primary gid; a uid with no
  entry runs with gid 0;
* ``user:group``: the group part (name or gid) replaces the primary gid;
* groups listing the user's name become additional gids.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from runtime.core.errors import InvalidArgument

__all__ = ["ResolvedUser", "resolve_user", "secure_join"]

_MAX_LINKS = 40


class ResolvedUser(msgspec.Struct, frozen=True):
    """A user as the OCI spec's ``process.user`` wants it, plus its home."""

    uid: int
    gid: int
    additional_gids: list[int] = msgspec.field(default_factory=list)
    name: str = ""
    home: str = ""


def secure_join(root: Path, path: str) -> Path:
    """``root / path`` with every symlink resolved inside ``root`` (as a chroot would)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise InvalidArgument(f"too many symlinks resolving {path!r} in the rootfs")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _entries(root: Path, name: str) -> list[list[str]]:
    try:
        text = secure_join(root, f"/etc/{name}").read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    return [line.split(":") for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def _passwd(root: Path, user: str) -> tuple[str, int, int, str] | None:
    """``(name, uid, gid, home)`` of the passwd entry for a name or numeric uid."""
    for entry in _entries(root, "passwd"):
        if len(entry) < 7 or not entry[2].isdigit() or not entry[3].isdigit():
            continue
        if entry[0] == user or (user.isdigit() and int(entry[2]) == int(user)):
            return entry[0], int(entry[2]), int(entry[3]), entry[5]
    return None


def _group_gid(root: Path, group: str) -> int:
    if group.isdigit():
        return int(group)
    for entry in _entries(root, "group"):
        if len(entry) >= 3 and entry[0] == group and entry[2].isdigit():
            return int(entry[2])
    raise InvalidArgument(f"unable to find group {group!r} in the container's /etc/group")


def _additional_gids(root: Path, name: str, primary: int) -> list[int]:
    gids: list[int] = []
    for entry in _entries(root, "group"):
        if len(entry) >= 4 and entry[2].isdigit() and name in entry[3].split(","):
            gid = int(entry[2])
            if gid != primary and gid not in gids:
                gids.append(gid)
    return gids


def resolve_user(root: Path, user: str) -> ResolvedUser:
    """Resolve ``user`` (``name``, ``uid``, ``name:group``, ``uid:gid``) in ``root``.

    Raises:
        InvalidArgument: A name that the container's files do not define.
    """
    who, _, group = user.partition(":")
    if not who:
        raise InvalidArgument(f"user {user!r}: the user part must not be empty")
    found = _passwd(root, who)
    if found is None:
        if not who.isdigit():
            raise InvalidArgument(f"unable to find user {who!r} in the container's /etc/passwd")
        uid, gid, name, home = int(who), 0, "", "/"
    else:
        name, uid, gid, home = found
    if group:
        gid = _group_gid(root, group)
    extra = _additional_gids(root, name, gid) if name else []
    return ResolvedUser(uid=uid, gid=gid, additional_gids=extra, name=name, home=home or "/")
