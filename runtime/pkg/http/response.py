"""Responses: ``StreamResponse`` (head first, then the body as written), ``Response``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from runtime.pkg.http.errors import reason_of
from runtime.pkg.http.headers import Headers
from runtime.pkg.http.request import Request

__all__ = ["Response", "StreamResponse", "json_response"]

# Answers that never carry a body (RFC 9110, 6.4.1).
_NO_BODY = frozenset({204, 304})


class StreamResponse:
    """A response whose body the handler writes after :meth:`prepare` sent the head.

    Without a ``content_length`` the body goes chunked (HTTP/1.1) or ends with
    the connection (HTTP/1.0). Each :meth:`write` waits while the peer's
    window is full, so a slow reader holds the handler back instead of
    filling the daemon's memory.
    """

    def __init__(self, *, status: int = 200, reason: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason or reason_of(status)
        self.headers = Headers(headers or {})
        self._request: Request | None = None
        self._chunked = False
        self._body_allowed = True
        self._left: int | None = None
        self._eof = False

    @property
    def prepared(self) -> bool:
        """Whether the head has been sent."""
        return self._request is not None

    @property
    def content_length(self) -> int | None:
        """The announced body length, if any."""
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None

    @content_length.setter
    def content_length(self, value: int | None) -> None:
        if value is None:
            self.headers.pop("Content-Length")
        else:
            self.headers["Content-Length"] = str(int(value))

    @property
    def content_type(self) -> str:
        """The media type (without parameters)."""
        return (self.headers.get("Content-Type") or "application/octet-stream").split(";")[0]

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.headers["Content-Type"] = value

    def _head(self, request: Request) -> bytes:
        headers = self.headers
        self._body_allowed = request.method != "HEAD" and self.status not in _NO_BODY \
            and self.status >= 200
        length = self.content_length
        if self.status in _NO_BODY:
            headers.pop("Content-Length")
            headers.pop("Transfer-Encoding")
        elif length is not None:
            headers.pop("Transfer-Encoding")
            self._left = length
        elif request.version >= (1, 1):
            headers["Transfer-Encoding"] = "chunked"
            self._chunked = True
        else:
            request.keep_alive = False  # the body ends with the connection
        if self.status >= 200 and "Connection" not in headers:
            if not request.keep_alive:
                headers["Connection"] = "close"
            elif request.version < (1, 1):
                headers["Connection"] = "keep-alive"
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _writer_of(self) -> Request:
        request = self._request
        if request is None:
            raise RuntimeError("write before prepare()")
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        return request

    async def prepare(self, request: Request) -> StreamResponse:
        """Send the status line and the header fields."""
        if self._request is None:
            self._request = request
            request.response = self
            self._writer_of()._writer.write(self._head(request))
        return self

    def _framed(self, data: bytes) -> bytes:
        if not self._body_allowed or not data:
            return b""
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self._left is not None:
            if len(data) > self._left:
                raise RuntimeError("response body longer than its Content-Length")
            self._left -= len(data)
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as part of the body; waits while the peer's window is full.

        Raises:
            ConnectionResetError: The peer has gone away.
        """
        if self._eof:
            raise RuntimeError("write after write_eof()")
        request = self._writer_of()
        framed = self._framed(bytes(data))
        if framed:
            request._writer.write(framed)
            await request._writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        """End the body (``data`` is its last part)."""
        if self._eof:
            return
        if self._request is None:
            raise RuntimeError("write_eof before prepare()")
        request = self._request
        transport = request.transport
        if transport is None or transport.is_closing():
            self._eof = True
            return
        framed = self._framed(data)
        if self._chunked and self._body_allowed:
            framed += b"0\r\n\r\n"
        self._eof = True
        if self._left:
            request.keep_alive = False  # shorter than announced: the framing is lost
        if framed:
            request._writer.write(framed)
        await request._writer.drain()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} {self.reason}>"


class Response(StreamResponse):
    """A response whose whole body is known up front (sent with the head, in one write)."""

    def __init__(self, *, body: bytes | bytearray | None = None, status: int = 200,
                 reason: str | None = None, text: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 content_type: str | None = None, charset: str | None = None) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        if text is not None:
            if body is not None:
                raise ValueError("body and text are exclusive")
            body = text.encode(charset or "utf-8")
            content_type = content_type or "text/plain"
            charset = charset or "utf-8"
        self.body = bytes(body) if body is not None else b""
        if content_type is not None:
            self.headers["Content-Type"] = (
                f"{content_type}; charset={charset}" if charset else content_type)
        elif body is not None and "Content-Type" not in self.headers:
            self.headers["Content-Type"] = "application/octet-stream"
        self.headers["Content-Length"] = str(len(self.body))

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()

    async def prepare(self, request: Request) -> StreamResponse:
        """Send the head and the whole body."""
        if self._request is None:
            self._request = request
            request.response = self
            writer = self._writer_of()._writer
            head = self._head(request)
            self._eof = True
            writer.write(head + self.body if self._body_allowed else head)
            await writer.drain()
        return self

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left to send: the body went with the head."""
        self._eof = True


def json_response(data: Any, *, status: int = 200,
                  dumps: Callable[[Any], str] = json.dumps,
                  headers: Mapping[str, str] | None = None) -> Response:
    """A JSON body (``application/json``)."""
    return Response(text=dumps(data), status=status, headers=headers,
                    content_type="application/json", charset=None)
