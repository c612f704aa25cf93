"""What a tar member says, read safely: its path cleaned, its times, its xattrs."""

from __future__ import annotations

import tarfile

from runtime.core.errors import (
    InvalidArgument,
)

__all__ = [
    "OVERLAY_XATTR",
    "XATTR_PAX",
    "clean_parts",
    "clean_path",
    "member_times",
    "member_xattrs",
    "pax_ns",
]


XATTR_PAX = "SCHILY.xattr."
# Overlay's own xattrs only have meaning in an upperdir; a layer expresses deletions with `.wh.`
# names, so an entry carrying them is dropped rather than trusted to steer overlayfs.
OVERLAY_XATTR = "trusted.overlay."
def clean_path(name: str, entry: str, what: str = "path") -> tuple[str, ...]:
    """Split a tar path into components, lexically cleaned like Go's ``filepath.Clean``.

    A leading ``/`` is dropped (layer paths are relative to the root); ``..`` that would climb
    above the root is refused rather than clamped, since only a hostile layer contains it.
    """
    parts = clean_parts(name)
    if parts is None:
        raise InvalidArgument(f"layer entry {entry!r}: {what} climbs out of the target")
    return tuple(parts)


def clean_parts(name: str) -> list[str] | None:
    """``name``'s components with ``.`` and ``..`` applied; ``None`` if ``..`` climbs above."""
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(comp)
    return parts


def pax_ns(value: str) -> int:
    """Parse a pax decimal time (``"1700000000.123456789"``) exactly, as nanoseconds."""
    sign = -1 if value.startswith("-") else 1
    whole, _, frac = value.lstrip("+-").partition(".")
    return sign * (int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9]))


_NS_BOUND = 1 << 62  # utimensat rejects times that do not fit in a 64-bit timespec


def member_times(member: tarfile.TarInfo) -> tuple[int, int]:
    """Return ``(atime_ns, mtime_ns)``: atime is the later of the two, as containerd does."""
    pax = member.pax_headers
    try:
        mtime = pax_ns(pax["mtime"]) if "mtime" in pax else int(member.mtime) * 1_000_000_000
        atime = pax_ns(pax["atime"]) if "atime" in pax else mtime
    except ValueError:
        raise InvalidArgument(f"layer entry {member.name!r}: bad pax time") from None
    mtime = max(-_NS_BOUND, min(_NS_BOUND, mtime))
    return max(atime, mtime), mtime


def member_xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """The member's ``SCHILY.xattr.`` records as raw bytes, overlay's own xattrs left out."""
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith(XATTR_PAX):
            name = key[len(XATTR_PAX) :]
            if not name.startswith(OVERLAY_XATTR):
                # tarfile decoded the raw value with surrogateescape; this gets the bytes back.
                out.append((name, value.encode("utf-8", "surrogateescape")))
    return out
