"""Image references, normalised the way Docker and containerd do it.

Grammar (from ``distribution/reference``)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]            host: DNS name, IPv4 or "[" IPv6 "]"
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 lowercase hex digits

The first ``/``-separated part is a domain when it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter; otherwise the domain is ``docker.io``
and one-part paths get ``library/``. Without tag and digest the tag is ``latest``.
"""

from __future__ import annotations

import re

import msgspec

from runtime.core.errors import InvalidArgument

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "normalize_host",
    "parse_reference",
    "validate_tag",
]

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})
_MAX_NAME = 255  # the distribution spec's limit on domain/path

_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-zA-Z=_-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Reference(msgspec.Struct, frozen=True):
    """A fully normalised image reference.

    Attributes:
        domain: Registry host with optional port (``docker.io``, ``127.0.0.1:5000``).
        path: Repository path inside the registry (``library/busybox``).
        tag: Tag, or ``""`` when the reference names a digest only.
        digest: ``sha256:<hex>``, or ``""``.
    """

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        """``domain/path``, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full reference: ``docker.io/library/busybox:latest`` (tag and/or ``@digest``)."""
        name = self.repository
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    @property
    def object(self) -> str:
        """What the registry is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        return self.name


def normalize_host(key: str) -> str:
    """The ``host[:port]`` a ``config.json`` key names (``docker.io`` for Docker Hub's).

    Keys come as ``https://index.docker.io/v1/``, ``host:port`` or
    ``http://host:port``; they are compared on ``host[:port]`` alone.
    """
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1]
    key = key.split("/", 1)[0].lower()
    return DEFAULT_DOMAIN if key in _LEGACY_DOMAINS else key


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag.

    Raises:
        InvalidArgument: It is not ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``.
    """
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidArgument(f"invalid tag {tag!r}: want [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    return tag


def _invalid(ref: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {ref!r}: {why}")


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    # Same rule as Docker's splitDockerDomain: "foo/bar" is a Docker Hub user repo,
    # "foo.com/bar", "foo:5000/bar" and "localhost/bar" name a registry.
    is_domain = sep and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_domain:
        return DEFAULT_DOMAIN, name
    return first, rest


def parse_reference(ref: str) -> Reference:
    """Parse and normalise an image reference.

    Args:
        ref: What a user typed: ``busybox``, ``127.0.0.1:5000/x/y:t``,
            ``quay.io/a/b@sha256:...``.

    Returns:
        The normalised reference; ``busybox`` becomes
        ``docker.io/library/busybox:latest``.

    Raises:
        InvalidArgument: The reference does not follow the grammar above; the
            message names the offending part.
    """
    if not isinstance(ref, str) or not ref:
        raise _invalid(str(ref), "empty reference")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise _invalid(ref, "contains whitespace")

    remainder, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        if _ANY_DIGEST.fullmatch(digest) and not digest.startswith("sha256:"):
            raise _invalid(ref, f"unsupported digest algorithm in {digest!r}, only sha256")
        raise _invalid(ref, f"invalid digest {digest!r}: want sha256:<64 lowercase hex>")

    # The tag separator is the last ":" after the last "/": "host:5000/x" has a port,
    # not a tag.
    tag = ""
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _invalid(ref, f"invalid tag {tag!r}: want [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    if not remainder:
        raise _invalid(ref, "missing repository name")
    if _HEX64.fullmatch(remainder):
        raise _invalid(ref, "a 64-character hex string is an image ID, not a repository name")

    domain, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        raise _invalid(ref, f"invalid registry host {domain!r}")
    if domain in _LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if not path:
        raise _invalid(ref, "missing repository path after the registry host")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise _invalid(ref, "repository name must be lowercase")
            raise _invalid(
                ref,
                f"invalid repository path component {component!r}: want lowercase "
                "letters and digits separated by '.', '_', '__' or '-'",
            )
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise _invalid(ref, f"repository name longer than {_MAX_NAME} characters")

    if not tag and not at:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
