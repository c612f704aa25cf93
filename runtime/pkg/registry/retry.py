"""Bounded retries of registry requests: attempts, backoff, a total bound, ``Retry-After``.

A registry that is down, overloaded (5xx), rate limiting (429) or cutting connections
gets a few more tries, each after a longer wait, and then the operation ends with the
last error and how many attempts were made. Nothing is retried forever:

* at most :attr:`RetryPolicy.attempts` attempts per operation (the first included);
* the wait before attempt *n* + 1 is ``backoff * 2**(n-1)``, at most ``max_backoff``,
  or what the registry's ``Retry-After`` asks (at most ``retry_after_cap``), whichever
  is longer;
* no attempt starts more than :attr:`RetryPolicy.total` seconds after the
  operation's first failure. One attempt itself is bounded by the client's connect
  and read timeouts, so a failing operation ends within about
  ``total + read_timeout`` seconds.

Errors that another try cannot mend (4xx other than 429, bad content, TLS trust)
are raised at once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated

import anyio
import msgspec

from runtime.core.errors import MoorageError, Unavailable

__all__ = ["RETRY_STATUSES", "RegistryBusy", "RetryPolicy", "Retrying", "parse_retry_after"]

log = logging.getLogger("moorage.registry")


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[plugins."images.store".retry]``: how hard a pull tries a failing registry."""

    #: Attempts of one request or blob download, the first included (1: no retry).
    attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 4
    #: Seconds before the second attempt; doubled for each one after.
    backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    #: The longest wait between two attempts that backoff alone makes.
    max_backoff: Annotated[float, msgspec.Meta(ge=0)] = 8.0
    #: Seconds after an operation's first failure past which no new attempt starts.
    total: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    #: The longest ``Retry-After`` honoured; a registry asking for more waits this long.
    retry_after_cap: Annotated[float, msgspec.Meta(ge=0)] = 10.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure before the next attempt."""
        backoff = min(self.backoff * 2.0 ** max(0, failures - 1), self.max_backoff)
        if retry_after is None:
            return backoff
        return max(backoff, min(max(0.0, retry_after), self.retry_after_cap))


#: Answers that say "not now" rather than "no": 408, 429 and the gateway 5xx.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RegistryBusy(Unavailable):
    """A 5xx or 429 answer, with the registry's ``Retry-After`` (seconds) if it sent one."""

    def __init__(self, message: str, *, status: int = 503,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds that a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    # email's date parser (email.utils and its charset modules, about 7 ms of
    # CPU) is imported by the first HTTP-date Retry-After, not by the daemon's start.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def _transient(exc: MoorageError) -> bool:
    """Whether another attempt may succeed: a busy, unreachable or cut-off registry."""
    if isinstance(exc, RegistryBusy):
        return exc.status in RETRY_STATUSES
    if not isinstance(exc, Unavailable):
        return False
    # An untrusted certificate or a failed handshake stays so.
    return not any(type(c).__name__ in ("ClientConnectorCertificateError", "ClientSSLError")
                   for c in _causes(exc))


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cause = exc.__cause__
    while cause is not None and len(out) < 8:
        out.append(cause)
        cause = cause.__cause__
    return out


def _final(exc: MoorageError, why: str) -> MoorageError:
    final = type(exc)(f"{exc.message} ({why})")
    final.__dict__.update(exc.__dict__)
    return final


class Retrying:
    """The attempts of one operation (one resolve, one manifest, one blob download).

    Call :meth:`failed` with each error: it returns after the wait when another
    attempt is due, and raises otherwise.

    Attributes:
        failures: Failed attempts so far.
    """

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self.failures = 0
        self._first_failure: float | None = None

    async def failed(self, exc: MoorageError) -> None:
        """Wait before the next attempt, or raise ``exc`` (marked final) if none is due.

        Raises:
            MoorageError: ``exc`` when it is not worth another try; a copy of its class
                naming the attempts made when the bound is reached.
        """
        self.failures += 1
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        if not _transient(exc):
            raise exc
        policy = self.policy
        if self.failures >= policy.attempts:
            raise _final(exc, f"gave up after {self.failures} attempts") from exc
        delay = policy.delay(self.failures, getattr(exc, "retry_after", None))
        spent = now - self._first_failure
        if spent + delay > policy.total:
            raise _final(exc, f"gave up after {self.failures} attempts in {spent:.1f}s: the "
                         f"next would start past the {policy.total:g}s retry bound") from exc
        log.info("%s: %s; attempt %d of %d in %.2fs", self.what, exc.message,
                 self.failures + 1, policy.attempts, delay)
        await anyio.sleep(delay)
