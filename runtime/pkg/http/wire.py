"""HTTP/1.1 on the wire: the request head and the request body (Content-Length or chunked).

Everything a peer sends is checked before it is believed: the request line
and each header field against their size limits, names and methods against
RFC 9110's token characters, and the body framing against smuggling (both
``Content-Length`` and ``Transfer-Encoding``, or two different lengths, are
refused). A violation raises :class:`BadRequest`, which the server answers
with 400 (or 431) before closing the connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import msgspec

from runtime.pkg.http.headers import Headers

__all__ = [
    "MAX_FIELD_SIZE",
    "MAX_HEAD_SIZE",
    "MAX_LINE_SIZE",
    "BadRequest",
    "BodyReader",
    "RequestHead",
    "read_head",
]

#: Longest request line, as aiohttp's parser allows.
MAX_LINE_SIZE = 8190
#: Longest header field (name, colon and value).
MAX_FIELD_SIZE = 8190
#: Longest head (request line and every field): the reader's buffer limit.
MAX_HEAD_SIZE = 64 * 1024
#: Most header fields in one request.
MAX_FIELDS = 128

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible characters, spaces and tabs (obs-text allowed), no controls.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VERSIONS = {"HTTP/1.1": (1, 1), "HTTP/1.0": (1, 0)}


class BadRequest(Exception):
    """The peer broke the protocol; ``status`` is the answer (400, 431, 501)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RequestHead(msgspec.Struct, frozen=True):
    """The request line and the header fields of one request."""

    method: str
    target: str
    version: tuple[int, int]
    headers: Headers

    @property
    def keep_alive(self) -> bool:
        """Whether the peer lets the connection carry another request after this one."""
        tokens = {t.strip().lower() for t in ",".join(self.headers.getall("Connection")).split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


async def read_head(reader: asyncio.StreamReader) -> RequestHead | None:
    """The next request's head; None when the peer closed the connection between requests.

    Raises:
        BadRequest: The head is malformed or too large.
    """
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest("connection closed inside the request head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large", 431) from None
    # Tolerate empty lines before a request (RFC 9112, 2.2).
    text = raw.lstrip(b"\r\n").decode("latin-1")
    line, *fields = text[:-4].split("\r\n")
    return RequestHead(*_request_line(line), headers=_fields(fields))


def _request_line(line: str) -> tuple[str, str, tuple[int, int]]:
    if len(line) > MAX_LINE_SIZE:
        raise BadRequest("request line too long", 431)
    parts = line.split(" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest("malformed method")
    if version not in _VERSIONS:
        raise BadRequest(f"unsupported protocol version {version[:16]!r}",
                         505 if version.startswith("HTTP/") else 400)
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise BadRequest("malformed request target")
    return method, target, _VERSIONS[version]


def _fields(lines: list[str]) -> Headers:
    if len(lines) > MAX_FIELDS:
        raise BadRequest("too many header fields", 431)
    pairs: list[tuple[str, str]] = []
    for line in lines:
        if len(line) > MAX_FIELD_SIZE:
            raise BadRequest("header field too long", 431)
        name, colon, value = line.partition(":")
        # A leading space is the obsolete line folding; a space before the colon
        # is how requests get smuggled past proxies (RFC 9112, 5.1): both refused.
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest("malformed header field")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest(f"invalid character in header {name}")
        pairs.append((name, value))
    return Headers(pairs)


def body_framing(head: RequestHead) -> tuple[bool, int]:
    """``(chunked, length)`` of the request body (length 0 when chunked or absent).

    Raises:
        BadRequest: Conflicting or malformed framing.
    """
    encodings = head.headers.getall("Transfer-Encoding")
    lengths = head.headers.getall("Content-Length")
    if encodings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        codings = [c.strip().lower() for c in ",".join(encodings).split(",")]
        if codings != ["chunked"]:
            raise BadRequest(f"unsupported transfer coding {','.join(codings)[:32]!r}", 501)
        return True, 0
    if not lengths:
        return False, 0
    values = {v.strip() for v in ",".join(lengths).split(",")}
    if len(values) != 1:
        raise BadRequest("conflicting Content-Length")
    value = values.pop()
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise BadRequest("malformed Content-Length")
    return False, int(value)


class BodyReader:
    """The request body as a stream (``request.content``), de-chunked.

    Reads never go past the body's end, so the next request on the
    connection starts where this body ends.
    """

    def __init__(self, reader: asyncio.StreamReader, *, chunked: bool, length: int) -> None:
        self._reader = reader
        self._chunked = chunked
        # Bytes left of the body (Content-Length) or of the current chunk.
        self._left = length
        self._eof = not chunked and length == 0

    def at_eof(self) -> bool:
        """Whether the whole body has been read."""
        return self._eof

    async def _next_chunk(self) -> None:
        line = await self._line()
        size_text = line.split(b";", 1)[0].strip()
        try:
            if not size_text or len(size_text) > 16:
                raise ValueError
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest("malformed chunk size") from None
        if size == 0:
            # Trailer fields (ignored) up to the empty line.
            while await self._line():
                pass
            self._eof = True
        self._left = size

    async def _line(self) -> bytes:
        try:
            line = await self._reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise BadRequest("connection closed inside a chunked body") from None
        except asyncio.LimitOverrunError:
            raise BadRequest("chunk header too long") from None
        if len(line) > MAX_FIELD_SIZE:
            raise BadRequest("chunk header too long")
        return line[:-2]

    async def readany(self) -> bytes:
        """Whatever part of the body is available next (at most 256 KiB); b"" at the end."""
        return await self._read_some(256 * 1024)

    async def _read_some(self, n: int) -> bytes:
        if self._eof:
            return b""
        if self._chunked and self._left == 0:
            await self._next_chunk()
            if self._eof:
                return b""
        data = await self._reader.read(min(n, self._left))
        if not data:
            raise BadRequest("connection closed inside the request body")
        self._left -= len(data)
        if self._left == 0:
            if self._chunked:
                if await self._line():
                    raise BadRequest("chunk not followed by CRLF")
            else:
                self._eof = True
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (some may come before ``n`` are available); all with -1."""
        if n >= 0:
            return await self._read_some(n) if n else b""
        parts = []
        while data := await self._read_some(256 * 1024):
            parts.append(data)
        return b"".join(parts)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: The body ended first.
        """
        parts: list[bytes] = []
        got = 0
        while got < n:
            data = await self._read_some(n - got)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``n`` bytes."""
        while data := await self._read_some(n):
            yield data

    async def discard(self, limit: int) -> bool:
        """Read and drop what is left of the body, up to ``limit`` bytes; whether it ended."""
        dropped = 0
        while dropped <= limit:
            data = await self._read_some(64 * 1024)
            if not data:
                return True
            dropped += len(data)
        return False
