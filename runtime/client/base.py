"""What both clients share: where the daemon is, who asks, and how an answer becomes an error.

:class:`runtime.client.Client` (typed) and :class:`runtime.client.lean.LeanClient`
(the CLI's hot commands) build their requests differently, msgspec against
plain JSON; they resolve the address, namespace and token, send the headers and
rebuild the server's errors the same way, here. Standard library only, and
neither ``typing`` nor ``json``: the lean client's start-up budget.
"""

from __future__ import annotations

import os

from runtime.api.constants import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
    JSON,
    NAMESPACE_ENV,
    NAMESPACE_HEADER,
)
from runtime.client.plainjson import loads
from runtime.client.transport import Response, request, unreachable
from runtime.core.errors import MoorageError, Unauthenticated, from_code

# typing.TYPE_CHECKING without importing typing at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["BaseClient", "default_address", "error_from"]


def default_address() -> str:
    """``$MOORAGE_ADDRESS`` or the default unix socket."""
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def error_from(status: int, raw: bytes) -> MoorageError:
    """The server's error answer (``{"error": {"code", "message"}}``) as its class."""
    try:
        detail = loads(raw)["error"]
        return from_code(str(detail["code"]), str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        if status == 401:
            return Unauthenticated("unauthenticated")
        return MoorageError(f"HTTP {status}: {raw[:200]!r}")


class BaseClient:
    """A connection to one daemon, in one namespace.

    Args:
        address: ``unix:///path`` or ``http://host:port`` (default from the environment).
        namespace: Sent as the ``Moorage-Namespace`` header on every request.
        token: Bearer token for a TCP address.
        token_file: File to read the token from, when ``token`` is not given.
        timeout: Socket timeout in seconds (``None``: wait forever, for streams).
    """

    def __init__(self, address: str | None = None, *, namespace: str | None = None,
                 token: str | None = None, token_file: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.address = address or default_address()
        self.namespace = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
        if token is None and token_file:
            with open(token_file) as handle:
                token = handle.read().strip()
        self.token = token
        self.timeout = timeout

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {NAMESPACE_HEADER: self.namespace, "Accept": JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if extra:
            headers.update(extra)
        return headers

    def _send(self, method: str, target: str, headers: Mapping[str, str],
              data: bytes | Iterable[bytes] | None, timeout: float | None) -> Response:
        """Send a request (``timeout`` -1: the client's); the response once it is a success.

        Raises:
            MoorageError: The server's error, rebuilt as the matching class.
            Unavailable: The daemon cannot be reached.
        """
        try:
            response = request(self.address, method, target, headers=headers, body=data,
                               timeout=self.timeout if timeout == -1.0 else timeout)
        except OSError as exc:
            raise unreachable(self.address, exc) from exc
        if response.status >= 400:
            raise self._error(response.status, response.read())
        return response

    @staticmethod
    def _error(status: int, raw: bytes) -> MoorageError:
        return error_from(status, raw)
