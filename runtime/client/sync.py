"""The synchronous client: one method per endpoint, typed results, domain errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from http.client import HTTPResponse
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import msgspec

from runtime.client.transport import connect
from runtime.core.errors import MoorageError, Unauthenticated, Unavailable, from_code
from runtime.plugins.api.types import (
    NAMESPACE_HEADER,
    ErrorBody,
    EventEnvelope,
    Health,
    NamespaceCreateRequest,
    NamespaceInfo,
    NamespaceLabelsRequest,
    PluginInfo,
    Version,
)

__all__ = ["Client", "default_address"]

T = TypeVar("T")

DEFAULT_SOCKET = "/run/moorage/moorage.sock"


def default_address() -> str:
    """``$MOORAGE_ADDRESS`` or the default unix socket."""
    return os.environ.get("MOORAGE_ADDRESS") or f"unix://{DEFAULT_SOCKET}"


class Client:
    """A client of one daemon, in one namespace.

    Args:
        address: ``unix:///path`` or ``http://host:port`` (default from the environment).
        namespace: Sent as the ``Moorage-Namespace`` header on every request.
        token: Bearer token for a TCP address.
        token_file: File to read the token from, when ``token`` is not given.
        timeout: Socket timeout in seconds (``None``: wait forever, for streams).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        namespace: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self.address = address or default_address()
        self.namespace = namespace or os.environ.get("MOORAGE_NAMESPACE") or "default"
        if token is None and token_file:
            token = Path(token_file).read_text().strip()
        self.token = token
        self.timeout = timeout

    # -- plumbing ---------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {NAMESPACE_HEADER: self.namespace, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def open(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = -1.0,
    ) -> HTTPResponse:
        """Send a request and return the raw response once its status is a success.

        Raises:
            MoorageError: the server's error, rebuilt as the matching class.
            Unavailable: the daemon cannot be reached.
        """
        if body is not None:
            data = msgspec.json.encode(body)
        if query:
            path = f"{path}?{urlencode(query, doseq=True)}"
        conn = connect(self.address, self.timeout if timeout == -1.0 else timeout)
        try:
            conn.request(method, path, body=data, headers=self._headers(headers))
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise Unavailable(
                f"cannot reach the moorage daemon at {self.address}: {exc.strerror}; "
                "is it running? (moorage daemon)"
            ) from exc
        except PermissionError as exc:
            conn.close()
            raise Unavailable(f"cannot open {self.address}: permission denied") from exc
        except OSError as exc:
            conn.close()
            raise Unavailable(f"cannot reach the moorage daemon at {self.address}: {exc}") from exc
        if response.status >= 400:
            raw = response.read()
            conn.close()
            raise self._error(response.status, raw)
        return response

    @staticmethod
    def _error(status: int, raw: bytes) -> MoorageError:
        try:
            detail = msgspec.json.decode(raw, type=ErrorBody).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            if status == 401:
                return Unauthenticated("unauthenticated")
            return MoorageError(f"HTTP {status}: {raw[:200]!r}")
        return from_code(detail.code, detail.message)

    def call(self, method: str, path: str, type_: type[T] | Any = None, **kw: Any) -> Any:
        """Send a request and decode the JSON answer into ``type_`` (``None``: discard)."""
        response = self.open(method, path, **kw)
        raw = response.read()
        if type_ is None or not raw:
            return None
        return msgspec.json.decode(raw, type=type_)

    def stream_lines(self, method: str, path: str, **kw: Any) -> Iterator[bytes]:
        """Yield the lines of a streamed (NDJSON) response as they arrive."""
        response = self.open(method, path, timeout=None, **kw)
        try:
            while line := response.readline():
                if line.strip():
                    yield line
        finally:
            response.close()

    # -- system -----------------------------------------------------------------

    def version(self) -> Version:
        """The daemon's version."""
        return self.call("GET", "/v1/version", Version)  # type: ignore[no-any-return]

    def healthz(self) -> Health:
        """Health of the daemon."""
        return self.call("GET", "/v1/healthz", Health)  # type: ignore[no-any-return]

    def plugins(self) -> list[PluginInfo]:
        """Every plugin with its status."""
        return self.call("GET", "/v1/plugins", list[PluginInfo])  # type: ignore[no-any-return]

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document."""
        return json.loads(self.open("GET", "/v1/openapi.json").read())  # type: ignore[no-any-return]

    def events(self, filters: list[str] | None = None) -> Iterator[EventEnvelope]:
        """Follow the namespace's events until the stream ends.

        Raises:
            MoorageError: when the server ends the stream with an error line
                (for example a subscriber that fell too far behind).
        """
        for line in self.stream_lines("GET", "/v1/events", query={"filter": filters or []}):
            obj = json.loads(line)
            if "error" in obj and "topic" not in obj:
                raise from_code(obj["error"]["code"], obj["error"]["message"])
            yield msgspec.convert(obj, EventEnvelope)

    # -- namespaces -------------------------------------------------------------

    def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace."""
        return self.call("GET", "/v1/namespaces", list[NamespaceInfo])  # type: ignore[no-any-return]

    def namespace(self, name: str) -> NamespaceInfo:
        """One namespace."""
        return self.call("GET", f"/v1/namespaces/{quote(name, safe='')}", NamespaceInfo)  # type: ignore[no-any-return]

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> NamespaceInfo:
        """Create a namespace."""
        body = NamespaceCreateRequest(name=name, labels=dict(labels or {}))
        return self.call("POST", "/v1/namespaces", NamespaceInfo, body=body)  # type: ignore[no-any-return]

    def label_namespace(self, name: str, labels: Mapping[str, str]) -> NamespaceInfo:
        """Set namespace labels; an empty value removes one."""
        body = NamespaceLabelsRequest(labels=dict(labels))
        return self.call("PATCH", f"/v1/namespaces/{quote(name, safe='')}", NamespaceInfo,  # type: ignore[no-any-return]
                         body=body)

    def delete_namespace(self, name: str) -> None:
        """Delete an empty namespace."""
        self.call("DELETE", f"/v1/namespaces/{quote(name, safe='')}")
