"""The HTTP side of an upgrade: what the client asks for, and the socket after a 101.

aiohttp's parser upgrades only to websocket; for SPDY/3.1 the server answers
101 itself and :class:`RawConnection` takes the transport over from aiohttp's
protocol, which still owns the request and hears of the connection's end.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["RawConnection", "offered", "upgrade_kind"]


def offered(request: web.Request, header: str) -> list[str]:
    """Every comma-separated value of ``header``, over all its lines."""
    return [value.strip() for line in request.headers.getall(header, [])
            for value in line.split(",") if value.strip()]


def upgrade_kind(request: web.Request) -> str:
    """``websocket``, ``spdy`` or ``""``: the upgrade the request asks for."""
    connection = {v.lower() for v in offered(request, "Connection")}
    upgrade = {v.lower() for v in offered(request, "Upgrade")}
    if "upgrade" in connection and "websocket" in upgrade:
        return "websocket"
    if "upgrade" in connection and "spdy/3.1" in upgrade:
        return "spdy"
    return ""


class RawConnection(asyncio.Protocol):
    """The upgraded socket, taken over from aiohttp after the 101 answer.

    aiohttp's own protocol still owns the request; it hears of the
    connection's end through us, so its bookkeeping stays right.
    """

    _HIGH_WATER = 256 * 1024

    def __init__(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> None:
        self._transport = transport
        self._previous = previous
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        """Buffer; stop reading past the high-water mark until :meth:`read`."""
        self._buffer += data
        self._wake()
        if len(self._buffer) > self._HIGH_WATER and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        """The client half-closed: readers get end-of-file; the transport closes."""
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Wake readers and writers; tell aiohttp's protocol."""
        self._eof = self._lost = True
        self._wake()
        self._writable.set()
        self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        """The transport's buffer is full: writers wait."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """The transport drained: writers go on."""
        self._writable.set()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """What arrived since the last read; ``b""`` at the end."""
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Write, waiting while the transport's buffer is full."""
        if self._lost or self._transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self._transport.write(data)
        await self._writable.wait()
        if self._lost:
            raise ConnectionResetError("the client closed the connection")

    def close(self) -> None:
        """Close the transport."""
        self._transport.close()
