"""The snapshotter proxy protocol: one JSON request and one JSON reply per method.

Every :class:`~runtime.plugins.snapshots.api.Snapshotter` method but ``close``
is ``POST /snapshotter/<method>`` with a request Struct below as its body and
a reply Struct as its ``200`` answer. ``GET /health`` answers :class:`Health`.
A failure is any non-2xx status with an :class:`ErrorReply` body, whose
``code`` is a :mod:`runtime.core.errors` wire code. ``docs/proxy-protocol.md``
is the prose reference, with examples.

Requests ignore unknown fields, so that a newer daemon may send fields an older
server does not know yet; replies are decoded the same way.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import msgspec

from runtime.plugins.snapshots.api import Info, Mount, Usage

__all__ = [
    "CALLS",
    "PROTOCOL_VERSION",
    "Call",
    "CommitRequest",
    "CreateRequest",
    "EmptyReply",
    "EmptyRequest",
    "ErrorDetail",
    "ErrorReply",
    "Health",
    "InfoReply",
    "InfosReply",
    "KeyRequest",
    "MountsReply",
    "UpdateRequest",
    "UsageReply",
    "WalkRequest",
]

#: The protocol version this module speaks; ``GET /health`` must report it.
PROTOCOL_VERSION: Final = 1


class _Message(msgspec.Struct, kw_only=True):
    """Base of every message: keyword-only; unknown fields are ignored."""


class KeyRequest(_Message):
    """Body of ``stat``, ``usage``, ``mounts`` and ``remove``."""

    key: str


class UpdateRequest(_Message):
    """Body of ``update``: the new labels replace the old ones as a whole."""

    key: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class CreateRequest(_Message):
    """Body of ``prepare`` and ``view``; ``parent=""`` is the empty tree."""

    key: str
    parent: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class CommitRequest(_Message):
    """Body of ``commit``: active ``key`` becomes committed ``name``."""

    name: str
    key: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class WalkRequest(_Message):
    """Body of ``walk``: filter strings, OR-ed; none matches everything."""

    filters: list[str] = msgspec.field(default_factory=list)


class EmptyRequest(_Message):
    """Body of ``cleanup``: ``{}``."""


class InfoReply(_Message):
    """Answer of ``stat`` and ``update``."""

    info: Info


class UsageReply(_Message):
    """Answer of ``usage``."""

    usage: Usage


class MountsReply(_Message):
    """Answer of ``prepare``, ``view`` and ``mounts``."""

    mounts: list[Mount]


class InfosReply(_Message):
    """Answer of ``walk``."""

    infos: list[Info]


class EmptyReply(_Message):
    """Answer of ``commit``, ``remove`` and ``cleanup``: ``{}``."""


class ErrorDetail(_Message):
    """The error itself: a wire code of :mod:`runtime.core.errors` and a message."""

    code: str
    message: str


class ErrorReply(_Message):
    """Body of every failed call: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class Health(_Message):
    """Answer of ``GET /health``: the protocol version and the plugin types served."""

    protocol: int
    types: list[str]


class Call(NamedTuple):
    """The request and reply types of one method."""

    request: type[_Message]
    reply: type[_Message]


#: Every method of the protocol, by the name in its path ``/snapshotter/<name>``.
CALLS: Final[dict[str, Call]] = {
    "stat": Call(KeyRequest, InfoReply),
    "update": Call(UpdateRequest, InfoReply),
    "usage": Call(KeyRequest, UsageReply),
    "mounts": Call(KeyRequest, MountsReply),
    "prepare": Call(CreateRequest, MountsReply),
    "view": Call(CreateRequest, MountsReply),
    "commit": Call(CommitRequest, EmptyReply),
    "remove": Call(KeyRequest, EmptyReply),
    "walk": Call(WalkRequest, InfosReply),
    "cleanup": Call(EmptyRequest, EmptyReply),
}
