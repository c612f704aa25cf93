"""``Request``: one request as a handler sees it."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from runtime.pkg.http.errors import HTTPRequestEntityTooLarge
from runtime.pkg.http.headers import Query
from runtime.pkg.http.wire import BodyReader, RequestHead

if TYPE_CHECKING:
    from runtime.pkg.http.app import Application
    from runtime.pkg.http.response import StreamResponse
    from runtime.pkg.http.router import MatchInfo

__all__ = ["Request", "safe_path"]


def safe_path(raw: str) -> str:
    """The path percent-decoded except for ``%2F`` and ``%25``: what routes match.

    A ``/`` sent as ``%2F`` stays inside one path segment (an image name in
    ``/v1/images/{name}``), and decoding ``%25`` last keeps ``%252F`` from
    turning into a separator; :func:`unquote_value` decodes those two in the
    values taken from the path (aiohttp's ``path_safe`` rule).
    """
    if "%" not in raw:
        return raw
    parts = raw.replace("%2f", "%2F").split("%2F")
    return "%2F".join("%25".join(unquote(p) for p in part.split("%25")) for part in parts)


def unquote_value(value: str) -> str:
    """A value matched in :func:`safe_path`'s form, fully decoded."""
    return value.replace("%2F", "/").replace("%25", "%")


class Request:
    """The head, the body stream, the route's values and a per-request dict.

    Attributes:
        method: The request method.
        path: The decoded path.
        raw_path: The path as sent (percent-encoded).
        query_string: The query as sent.
        headers: The header fields (case-insensitive).
        content: The body as a stream.
        match_info: The values of the route's ``{name}`` parts.
        app: The application serving the request.
        transport: The connection's transport (``get_extra_info("peername")``).
    """

    def __init__(self, head: RequestHead, content: BodyReader, app: Application,
                 transport: asyncio.Transport, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.method = head.method
        self.version = head.version
        self.headers = head.headers
        target = head.target.partition("#")[0]
        self.raw_path, _, self.query_string = target.partition("?")
        self.path_safe = safe_path(self.raw_path)
        self.content = content
        self.app = app
        self.transport: asyncio.Transport | None = transport
        #: Whether the connection carries another request after this one.
        self.keep_alive = head.keep_alive
        #: The response whose head has been sent, once one has.
        self.response: StreamResponse | None = None
        self.match_info: MatchInfo
        self._reader = reader
        self._writer = writer
        self._query: Query | None = None
        self._path: str | None = None
        self._state: dict[str, Any] = {}

    @property
    def path(self) -> str:
        """The path, percent-decoded."""
        if self._path is None:
            self._path = unquote(self.raw_path) if "%" in self.raw_path else self.raw_path
        return self._path

    @property
    def query(self) -> Query:
        """The query parameters (``get`` the first value, ``getall`` every one)."""
        if self._query is None:
            self._query = Query(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._state[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        """A value a middleware left, or ``default``."""
        return self._state.get(key, default)

    async def read(self) -> bytes:
        """The whole body, at most the application's ``client_max_size``.

        Raises:
            HTTPRequestEntityTooLarge: The body is larger.
        """
        limit = self.app.client_max_size
        parts: list[bytes] = []
        size = 0
        while data := await self.content.readany():
            size += len(data)
            if size > limit:
                raise HTTPRequestEntityTooLarge(limit, size)
            parts.append(data)
        return b"".join(parts)

    async def text(self) -> str:
        """The body decoded as UTF-8."""
        return (await self.read()).decode()

    async def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(await self.read())

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path}>"
