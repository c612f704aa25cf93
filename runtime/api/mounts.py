"""Mounts as they cross plugins and the wire: a snapshot's mounts, a task's root filesystem."""

from __future__ import annotations

import msgspec

__all__ = ["Mount"]


class Mount(msgspec.Struct, frozen=True, kw_only=True):
    """One mount to perform, in ``mount(8)`` terms.

    Attributes:
        type: The filesystem type (``"bind"``, ``"overlay"``...).
        source: The source path, or a placeholder such as ``"overlay"``.
        target: A path relative to the mount point of the whole list, or
            ``""`` for the mount point itself.
        options: ``mount -o`` options, one per item (``"ro"``, ``"rbind"``,
            ``"lowerdir=/a:/b"``).
    """

    type: str
    source: str
    target: str = ""
    options: list[str] = msgspec.field(default_factory=list)
