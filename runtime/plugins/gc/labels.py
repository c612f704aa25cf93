"""The label grammar of garbage collection: references, roots, expiry and flat leases.

Only this module knows how the ``containerd.io/gc.*`` labels are spelled; the
stores' :class:`~runtime.plugins.gc.api.Source` implementations ask it (through
:mod:`runtime.plugins.gc.api`, which re-exports it) which objects a set of
labels refers to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

__all__ = [
    "LABEL_EXPIRE",
    "LABEL_FLAT",
    "LABEL_REF_CONTENT",
    "LABEL_REF_IMAGE",
    "LABEL_REF_SNAPSHOT",
    "LABEL_ROOT",
    "expire_time",
    "expired",
    "is_flat",
    "is_root",
    "label_refs",
    "labels_of",
    "parse_time",
]

LABEL_ROOT = "containerd.io/gc.root"
LABEL_REF_CONTENT = "containerd.io/gc.ref.content"
#: Followed by ``<snapshotter>`` and optionally ``/<name>``.
LABEL_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_REF_IMAGE = "containerd.io/gc.ref.image"
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"


def labels_of(raw: str | None) -> dict[str, str]:
    """A record's labels from their JSON text; ``{}`` for none or anything but an object."""
    # Most records carry no labels: skip the JSON parser for them.
    if not raw or raw == "{}":
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def _named(key: str, prefix: str) -> bool:
    """``prefix`` itself, or ``prefix.<anything>`` / ``prefix/<anything>``."""
    if not key.startswith(prefix):
        return False
    rest = key[len(prefix) :]
    return rest == "" or rest[0] in "./"


def label_refs(labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """The objects ``labels`` refer to, as ``(kind, key)`` in the labelled object's namespace.

    Kinds are lease resource types: ``content`` (key a digest), ``images``
    (key a name) and ``snapshots/<snapshotter>`` (key a snapshot key). Empty
    values refer to nothing; values are not validated (a malformed digest
    simply names no record).
    """
    for key, value in labels.items():
        if not value or not key.startswith("containerd.io/gc.ref."):
            continue
        if _named(key, LABEL_REF_CONTENT):
            yield "content", value
        elif key.startswith(LABEL_REF_SNAPSHOT):
            snapshotter = key[len(LABEL_REF_SNAPSHOT) :].split("/", 1)[0]
            if snapshotter:
                yield f"snapshots/{snapshotter}", value
        elif _named(key, LABEL_REF_IMAGE):
            yield "images", value


def is_root(labels: Mapping[str, str]) -> bool:
    """``containerd.io/gc.root`` with any non-empty value (never parsed, as in containerd)."""
    return bool(labels.get(LABEL_ROOT))


def is_flat(labels: Mapping[str, str]) -> bool:
    """A lease labelled ``containerd.io/gc.flat`` (any non-empty value)."""
    return bool(labels.get(LABEL_FLAT))


def expire_time(labels: Mapping[str, str]) -> datetime | None:
    """The ``containerd.io/gc.expire`` time, or None if absent or unreadable.

    An unreadable value never expires, like the lease store's own check:
    dropping a lease over a typo would lose what it protects.
    """
    return parse_time(labels.get(LABEL_EXPIRE, ""))


def parse_time(raw: str) -> datetime | None:
    """An RFC 3339 time (``Z`` or an offset; none means UTC), or None if empty or unreadable."""
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def expired(labels: Mapping[str, str], at: datetime) -> bool:
    """True if ``labels`` carry a ``containerd.io/gc.expire`` time at or before ``at``."""
    when = expire_time(labels)
    return when is not None and when <= at
