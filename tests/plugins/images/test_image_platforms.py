"""Platforms: normalisation, parsing, compatibility and ranking of index entries."""

from __future__ import annotations

import pytest

from runtime.core.errors import InvalidArgument
from runtime.pkg.registry.types import Descriptor, Platform
from runtime.plugins.images.platforms import (
    format_platform,
    host_platform,
    normalize,
    only,
    parse_platform,
    select_manifests,
)


def _p(text: str) -> Platform:
    os_, arch, *rest = text.split("/")
    return Platform(os=os_, architecture=arch, variant=rest[0] if rest else "")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("linux/x86_64", "linux/amd64"),
        ("Linux/AMD64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/i686", "linux/386"),
    ],
)
def test_normalize_spells_platforms_like_containerd(given: str, expected: str) -> None:
    assert format_platform(normalize(_p(given))) == expected


def test_parse_platform_fills_in_from_the_host() -> None:
    host = host_platform()
    assert parse_platform("linux/arm64") == Platform(os="linux", architecture="arm64")
    assert parse_platform("arm64") == Platform(os=host.os, architecture="arm64")
    assert parse_platform(host.os) == host


@pytest.mark.parametrize("text", ["", "linux//amd64", "a/b/c/d", " "])
def test_parse_platform_refuses_malformed_text(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid platform"):
        parse_platform(text)


def test_only_accepts_what_the_platform_can_run_and_ranks_it_lower() -> None:
    matcher = only([_p("linux/amd64")])
    assert matcher.match(_p("linux/amd64"))
    assert matcher.match(_p("linux/386"))
    assert not matcher.match(_p("linux/arm64"))
    assert matcher.rank(_p("linux/amd64")) < matcher.rank(_p("linux/386"))
    arm = only([_p("linux/arm/v7")])
    assert arm.match(_p("linux/arm/v6")) and not arm.match(_p("linux/arm/v8"))
    assert only([_p("linux/arm64")]).match(_p("linux/arm/v7"))


def test_select_manifests_prefers_the_best_match_and_puts_platformless_last() -> None:
    def desc(n: int, platform: str | None) -> Descriptor:
        return Descriptor(
            mediaType="m",
            digest=f"sha256:{n:064x}",
            size=1,
            platform=_p(platform) if platform else None,
        )

    entries = [desc(1, "linux/386"), desc(2, None), desc(3, "linux/arm64"), desc(4, "linux/amd64")]
    matcher = only([_p("linux/amd64")])
    assert select_manifests(entries, matcher) == [entries[3]]
    assert select_manifests(entries, matcher, limit=None) == [entries[3], entries[0], entries[1]]
    assert select_manifests(entries, None, limit=None) == entries
