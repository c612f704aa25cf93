"""Platforms: parse ``os/arch[/variant]``, normalise, match and rank index entries.

Rules follow containerd's ``platforms`` package:

* ``x86_64`` and ``x86-64`` are ``amd64``; ``aarch64`` is ``arm64``, whose
  default variant ``v8`` is dropped; ``arm`` defaults to ``v7``; ``armhf`` is
  ``arm/v7`` and ``armel`` ``arm/v6``; ``i386``/``i686`` are ``386``.
* :func:`only` accepts a platform plus the ones it can run: ``amd64`` runs
  ``386``; ``arm64`` runs ``arm/v8`` down to ``arm/v5``; ``arm/v7`` runs ``v6``
  and ``v5``. Earlier entries of the list rank higher.
* An index entry without a platform matches everything and ranks last.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Callable, Iterable, Sequence

import msgspec

from runtime.core.errors import InvalidArgument
from runtime.pkg.registry.types import Descriptor, Platform

__all__ = [
    "Matcher",
    "format_platform",
    "host_platform",
    "matcher_for",
    "normalize",
    "only",
    "parse_platform",
    "select_manifests",
]

_ARCH = {
    "x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "armhf": "arm", "armel": "arm", "arm": "arm", "armv7l": "arm", "armv6l": "arm",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "386": "386",
}  # fmt: skip
# Variants implied by an architecture alias (armhf is v7, armel v6, ...).
_ALIAS_VARIANT = {"armhf": "v7", "armel": "v6", "armv7l": "v7", "armv6l": "v6"}
_OS = {"macos": "darwin"}


def normalize(p: Platform) -> Platform:
    """The canonical spelling of ``p`` (lower case, GOARCH names, default variants)."""
    os_ = p.os.lower()
    os_ = _OS.get(os_, os_)
    raw_arch = p.architecture.lower()
    arch = _ARCH.get(raw_arch, raw_arch)
    variant = p.variant.lower() or _ALIAS_VARIANT.get(raw_arch, "")
    if variant and variant[0].isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant == "v8":
        variant = ""
    elif arch == "arm" and not variant:
        variant = "v7"
    elif arch == "amd64" and variant == "v1":
        variant = ""
    return Platform(os=os_, architecture=arch, variant=variant, os_version=p.os_version)


def host_platform() -> Platform:
    """The platform of the machine the daemon runs on."""
    return normalize(
        Platform(
            os=_platform.system().lower() or "linux", architecture=_platform.machine() or "amd64"
        )
    )


def parse_platform(text: str) -> Platform:
    """Parse ``os``, ``os/arch``, ``os/arch/variant`` or a bare ``arch``.

    A bare architecture gets the host's OS, a bare OS the host's architecture.

    Raises:
        InvalidArgument: Empty parts or more than three parts.
    """
    parts = text.strip().split("/")
    if not text.strip() or any(not part for part in parts) or len(parts) > 3:
        raise InvalidArgument(f"invalid platform {text!r}: want os/arch[/variant]")
    host = host_platform()
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _ARCH:
            return normalize(Platform(os=host.os, architecture=word))
        return normalize(
            Platform(
                os=word,
                architecture=host.architecture,
                variant=host.variant if word == host.os else "",
            )
        )
    variant = parts[2] if len(parts) == 3 else ""
    return normalize(Platform(os=parts[0], architecture=parts[1], variant=variant))


def format_platform(p: Platform) -> str:
    """``os/arch[/variant]``."""
    return "/".join(x for x in (p.os, p.architecture, p.variant) if x)


def _key(p: Platform) -> tuple[str, str, str]:
    n = normalize(p)
    return (n.os, n.architecture, n.variant)


def _compatible(p: Platform) -> list[Platform]:
    """``p`` followed by the platforms it can also run, best first."""
    n = normalize(p)
    out = [n]
    if n.architecture == "amd64":
        out.append(Platform(os=n.os, architecture="386"))
    elif n.architecture == "arm64":
        out += [Platform(os=n.os, architecture="arm", variant=f"v{v}") for v in (8, 7, 6, 5)]
    elif n.architecture == "arm" and n.variant[1:].isdigit():
        out += [
            Platform(os=n.os, architecture="arm", variant=f"v{v}")
            for v in range(int(n.variant[1:]) - 1, 4, -1)
        ]
    return out


class Matcher(msgspec.Struct, frozen=True):
    """Accepts platforms from an ordered list; an earlier entry ranks higher."""

    wanted: tuple[tuple[str, str, str], ...]

    def match(self, p: Platform | None) -> bool:
        """Whether ``p`` is acceptable (``None``: an entry without platform, accepted)."""
        return p is None or _key(p) in self.wanted

    def rank(self, p: Platform | None) -> int:
        """Lower is better; entries without a platform rank after every match."""
        if p is None:
            return len(self.wanted)
        key = _key(p)
        return self.wanted.index(key) if key in self.wanted else len(self.wanted) + 1


def only(platforms: Iterable[Platform]) -> Matcher:
    """A matcher for ``platforms`` and what each of them can run (``platforms.Only``)."""
    keys: list[tuple[str, str, str]] = []
    for p in platforms:
        for c in _compatible(p):
            if _key(c) not in keys:
                keys.append(_key(c))
    return Matcher(tuple(keys))


def matcher_for(platforms: Sequence[str]) -> Matcher:
    """A matcher for ``os/arch[/variant]`` strings; the host's platform when empty."""
    return only([parse_platform(p) for p in platforms] or [host_platform()])


def select_manifests(
    manifests: Sequence[Descriptor],
    matcher: Matcher | None,
    *,
    limit: int | None = 1,
    accept: Callable[[Descriptor], bool] = lambda d: True,
) -> list[Descriptor]:
    """The index entries to follow: matching ones, best first, at most ``limit``.

    ``matcher=None`` keeps every entry (all platforms) in index order; ``accept``
    drops entries of other kinds (attestations) before matching.
    """
    candidates = [m for m in manifests if accept(m)]
    if matcher is None:
        return candidates
    kept = [m for m in candidates if matcher.match(m.platform)]
    # Stable sort: equal ranks keep the index's order, as containerd's sort.SliceStable.
    kept.sort(key=lambda m: matcher.rank(m.platform))
    return kept if limit is None else kept[:limit]
