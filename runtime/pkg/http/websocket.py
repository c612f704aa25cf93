"""Server-side websockets (RFC 6455): the upgrade, frames, fragments, ping/pong and close."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from enum import IntEnum
from typing import Any, NamedTuple

from runtime.pkg.http.errors import HTTPBadRequest
from runtime.pkg.http.request import Request
from runtime.pkg.http.response import StreamResponse

__all__ = ["WSCloseCode", "WSMessage", "WSMsgType", "WebSocketResponse", "accept_key"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WSMsgType(IntEnum):
    """Message types: the frame opcodes, plus the states aiohttp reports as messages."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA
    CLOSING = 0x100
    CLOSED = 0x101
    ERROR = 0x102


class WSCloseCode(IntEnum):
    """The close codes this server sends."""

    OK = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_TEXT = 1007
    MESSAGE_TOO_BIG = 1009


class WSMessage(NamedTuple):
    """One message: TEXT data is a str, BINARY bytes, CLOSE the code (extra: the reason)."""

    type: WSMsgType
    data: Any
    extra: Any


_CLOSED = WSMessage(WSMsgType.CLOSED, None, None)


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    # XOR as one big integer: linear in C, with no per-byte Python loop.
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little")


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class WebSocketResponse(StreamResponse):
    """The server side of one websocket; :meth:`prepare` answers the upgrade.

    Pings are answered and pongs dropped inside :meth:`receive`; a close from
    the peer is answered and returned as a CLOSE message; a protocol error or
    a message over ``max_msg_size`` closes the websocket (1002, 1007, 1009)
    and is returned as an ERROR message.
    """

    def __init__(self, *, max_msg_size: int = 4 * 1024 * 1024, timeout: float = 10.0) -> None:
        super().__init__(status=101)
        self.max_msg_size = max_msg_size
        self._close_timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closing = False  # we sent a close frame
        self._closed = False  # the websocket is over: no more messages either way
        self._reading = False
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        """Whether a close frame has been sent or received."""
        return self._closing or self._closed

    async def prepare(self, request: Request) -> StreamResponse:
        """Check the upgrade request and answer 101.

        Raises:
            HTTPBadRequest: The request is not a websocket upgrade.
        """
        if self._request is not None:
            return self
        headers = request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            raise HTTPBadRequest(text="No WebSocket UPGRADE hdr: "
                                      f"{headers.get('Upgrade')}\n Can \"Upgrade\" only to "
                                      "\"WebSocket\".")
        connection = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        if "upgrade" not in connection:
            raise HTTPBadRequest(text=f"No CONNECTION upgrade hdr: {headers.get('Connection')}")
        if headers.get("Sec-WebSocket-Version") != "13":
            raise HTTPBadRequest(text="Unsupported version: "
                                      f"{headers.get('Sec-WebSocket-Version')}")
        key = headers.get("Sec-WebSocket-Key", "")
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid = False
        if not valid:
            raise HTTPBadRequest(text=f"Handshake error: {key!r}")
        self.headers = type(self.headers)({"Upgrade": "websocket", "Connection": "upgrade",
                                           "Sec-WebSocket-Accept": accept_key(key)})
        # The connection ends with the websocket.
        request.keep_alive = False
        self._request = request
        request.response = self
        self._reader, self._writer = request._reader, request._writer
        self._eof = True
        lines = ["HTTP/1.1 101 Switching Protocols",
                 *(f"{k}: {v}" for k, v in self.headers.items())]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self._writer.drain()
        return self

    # -- sending ------------------------------------------------------------------

    async def _send(self, opcode: int, payload: bytes) -> None:
        writer = self._writer
        if writer is None:
            raise RuntimeError("send before prepare()")
        if (self._closing and opcode != WSMsgType.CLOSE) or writer.transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        writer.write(_frame(opcode, payload))
        await writer.drain()

    async def send_str(self, data: str) -> None:
        """Send one text message."""
        await self._send(WSMsgType.TEXT, data.encode())

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send one binary message."""
        await self._send(WSMsgType.BINARY, bytes(data))

    async def send_json(self, data: Any) -> None:
        """Send ``data`` as a JSON text message."""
        import json

        await self.send_str(json.dumps(data))

    async def ping(self, message: bytes = b"") -> None:
        """Send a ping (the peer's pong is dropped by :meth:`receive`)."""
        await self._send(WSMsgType.PING, message)

    async def _send_close(self, code: int, message: bytes = b"") -> None:
        if self._closing:
            return
        self._closing = True
        if self.close_code is None:
            self.close_code = code
        # A peer that is gone has nothing to be told goodbye.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._send(WSMsgType.CLOSE, struct.pack("!H", code) + message[:123])

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        """Send a close frame, wait (up to the timeout) for the peer's, end the connection.

        Returns:
            False if the websocket was closed already.
        """
        if self._writer is None:
            return False
        if self._closed and self._closing:
            self._writer.close()
            return False
        was_closing = self._closing
        await self._send_close(code, message)
        if not self._closed and not self._reading and not was_closing:
            # Read until the peer's close frame, as RFC 6455 asks, but not forever.
            try:
                async with asyncio.timeout(self._close_timeout):
                    while not self._closed:
                        await self._read_message()
            except (TimeoutError, ProtocolError, ConnectionError, asyncio.IncompleteReadError):
                pass
        self._closed = True
        self._writer.close()
        return not was_closing

    # -- receiving ----------------------------------------------------------------

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        assert self._reader is not None
        reader = self._reader
        first, second = await reader.readexactly(2)
        if first & 0x70:
            raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
        fin, opcode = bool(first & 0x80), first & 0x0F
        if not second & 0x80:
            raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "client frame not masked")
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        if opcode >= 0x8:
            if not fin or n > 125:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "bad control frame")
            if opcode not in (WSMsgType.CLOSE, WSMsgType.PING, WSMsgType.PONG):
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        elif opcode not in (WSMsgType.CONTINUATION, WSMsgType.TEXT, WSMsgType.BINARY):
            raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if n > self.max_msg_size:
            raise ProtocolError(WSCloseCode.MESSAGE_TOO_BIG,
                                f"Message size {n} exceeds limit {self.max_msg_size}")
        key = await reader.readexactly(4)
        payload = await reader.readexactly(n) if n else b""
        return fin, opcode, _unmask(payload, key)

    async def _read_message(self) -> WSMessage:
        """The next data or close message (pings answered on the way)."""
        fragments: list[bytes] = []
        size = 0
        message_op = 0
        while True:
            fin, opcode, payload = await self._read_frame()
            if opcode == WSMsgType.PING:
                if not self._closing:
                    await self._send(WSMsgType.PONG, payload)
                continue
            if opcode == WSMsgType.PONG:
                continue
            if opcode == WSMsgType.CLOSE:
                return self._on_close(payload)
            if opcode == WSMsgType.CONTINUATION:
                if not message_op:
                    raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "continuation of nothing")
            elif message_op:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "message inside a message")
            else:
                message_op = opcode
            size += len(payload)
            if size > self.max_msg_size:
                raise ProtocolError(WSCloseCode.MESSAGE_TOO_BIG,
                                    f"Message size {size} exceeds limit {self.max_msg_size}")
            fragments.append(payload)
            if fin:
                data = b"".join(fragments) if len(fragments) > 1 else payload
                if message_op == WSMsgType.TEXT:
                    try:
                        return WSMessage(WSMsgType.TEXT, data.decode("utf-8"), None)
                    except UnicodeDecodeError:
                        raise ProtocolError(WSCloseCode.INVALID_TEXT,
                                            "text message is not UTF-8") from None
                return WSMessage(WSMsgType.BINARY, data, None)

    def _on_close(self, payload: bytes) -> WSMessage:
        self._closed = True
        code, reason = WSCloseCode.OK.value, ""
        if len(payload) >= 2:
            (code,) = struct.unpack("!H", payload[:2])
            reason = payload[2:].decode("utf-8", "replace")
        elif payload:
            raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "close frame of one byte")
        if self.close_code is None:
            self.close_code = code
        return WSMessage(WSMsgType.CLOSE, code, reason)

    async def receive(self, timeout: float | None = None) -> WSMessage:
        """The next message; CLOSED once the websocket is over.

        Raises:
            TimeoutError: Nothing arrived within ``timeout`` seconds.
        """
        if self._reader is None:
            raise RuntimeError("receive before prepare()")
        if self._closed:
            return _CLOSED
        if self._reading:
            raise RuntimeError("concurrent call to receive() is not allowed")
        self._reading = True
        try:
            async with asyncio.timeout(timeout):
                message = await self._read_message()
        except ProtocolError as exc:
            self._closed = True
            await self._send_close(exc.code)
            self.close_code = exc.code
            return WSMessage(WSMsgType.ERROR, exc, None)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._closed = True
            if self.close_code is None:
                self.close_code = 1006
            return _CLOSED
        finally:
            self._reading = False
        if message.type == WSMsgType.CLOSE:
            # Answer the peer's close (the code it sent), as aiohttp's autoclose does.
            await self._send_close(WSCloseCode.OK)
            if self._writer is not None:
                self._writer.close()
        return message

    def __aiter__(self) -> WebSocketResponse:
        return self

    async def __anext__(self) -> WSMessage:
        message = await self.receive()
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return message

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Not for websockets: use :meth:`send_bytes`."""
        raise RuntimeError("use send_bytes() or send_str() on a websocket")

    async def write_eof(self, data: bytes = b"") -> None:
        """End the websocket if the handler has not (the server calls this)."""
        if not self._closed:
            await self.close()
