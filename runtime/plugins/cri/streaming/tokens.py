"""Single-use, expiring tokens: the URL a CRI Exec/Attach/PortForward call returns names one.

A token stands for the request it was issued for; the first connection that
presents it consumes it, whether or not the upgrade then succeeds. An unknown,
used or expired token, or a token presented on the wrong path, finds nothing.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from runtime.core.errors import ResourceExhausted

__all__ = ["AttachRequest", "ExecRequest", "PortForwardRequest", "StreamRequest", "TokenCache"]


@dataclass(frozen=True, kw_only=True)
class ExecRequest:
    """A CRI ``ExecRequest`` waiting for its connection."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass(frozen=True, kw_only=True)
class AttachRequest:
    """A CRI ``AttachRequest`` waiting for its connection."""

    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass(frozen=True, kw_only=True)
class PortForwardRequest:
    """A CRI ``PortForwardRequest`` waiting for its connection."""

    sandbox_id: str
    ports: tuple[int, ...] = ()


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class TokenCache:
    """Requests by token, each for ``ttl`` seconds and one use.

    Args:
        ttl: Seconds a token stays valid.
        max_in_flight: Unused tokens held at most; issuing more is refused.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, *, ttl: float = 60.0, max_in_flight: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._clock = clock
        # Insertion order is expiry order: every token lives the same ttl.
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def issue(self, request: StreamRequest) -> str:
        """A new token for ``request``.

        Raises:
            ResourceExhausted: ``max_in_flight`` tokens are waiting already.
        """
        self._expire()
        if len(self._entries) >= self.max_in_flight:
            raise ResourceExhausted(f"{self.max_in_flight} streaming requests are already "
                                    "waiting for their connection")
        token = secrets.token_urlsafe(16)
        self._entries[token] = (self._clock() + self.ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request of a valid token, which stops being valid; None otherwise."""
        self._expire()
        entry = self._entries.pop(token, None)
        return entry[1] if entry is not None else None

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                return
            del self._entries[token]
