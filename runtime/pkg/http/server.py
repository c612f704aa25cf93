"""``HttpServer``: connections, requests in turn on each, listeners and a graceful stop.

One asyncio task per connection reads a request head, runs the handler
(inside the application's middlewares) and sends what it returned; with
keep-alive it then waits for the next request. Whatever a peer sends, the
daemon stays up: a malformed request is answered 400 (431 for oversized
heads, 501 for unknown transfer codings) and its connection closed; an
exception a handler lets through is a 500 and logged.

:meth:`HttpServer.shutdown` stops listening, runs the application's
``on_shutdown`` callbacks (which end endless streams), closes the idle
keep-alive connections, waits for running handlers up to a timeout and then
cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from runtime.pkg.http.app import Application
from runtime.pkg.http.errors import HTTPException
from runtime.pkg.http.request import Request
from runtime.pkg.http.response import Response, StreamResponse
from runtime.pkg.http.wire import (
    MAX_HEAD_SIZE,
    BadRequest,
    BodyReader,
    RequestHead,
    body_framing,
    read_head,
)

__all__ = ["HttpServer"]

log = logging.getLogger("moorage.http")

#: Seconds an idle keep-alive connection is kept open.
KEEPALIVE_TIMEOUT = 75.0
#: Seconds the rest of a body left unread by its handler is read and dropped
#: before the connection is closed.
LINGER_SECONDS = 10.0


class _Connection:
    """One peer's connection: its streams and whether a request is in progress."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.busy = False
        self.task: asyncio.Task[None] | None = None


class HttpServer:
    """Serves one :class:`Application` on any number of listening sockets.

    Args:
        app: What to serve.
        access_log: A logger for one debug line per request (None: none).
    """

    def __init__(self, app: Application, *, access_log: logging.Logger | None = None) -> None:
        self.app = app
        self.access_log = access_log
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._stopping = False

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        found: list[socket.socket] = []
        for server in self._servers:
            found.extend(server.sockets)  # type: ignore[arg-type]
        return found

    async def serve_socket(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (listening already: unix or TCP)."""
        if sock.family == socket.AF_UNIX:
            server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                     limit=MAX_HEAD_SIZE)
        else:
            server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD_SIZE)
        self._servers.append(server)

    async def serve_tcp(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port; see :attr:`sockets`)."""
        server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_SIZE,
                                            reuse_address=True)
        self._servers.append(server)

    async def shutdown(self, timeout: float = 2.0) -> None:
        """Stop listening, end streams and idle connections, wait, then cancel the rest."""
        self._stopping = True
        for server in self._servers:
            server.close()
        await self.app.shutdown()
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        running = [c.task for c in self._connections if c.task is not None]
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    # -- one connection ------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer)
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        try:
            while not self._stopping:
                try:
                    async with asyncio.timeout(KEEPALIVE_TIMEOUT):
                        head = await read_head(reader)
                except BadRequest as exc:
                    await self._refuse(writer, exc)
                    break
                if head is None:
                    break
                conn.busy = True
                try:
                    keep = await self._one(conn, head)
                finally:
                    conn.busy = False
                if not keep:
                    break
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(conn)
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, exc: BadRequest) -> None:
        body = f"{exc.status}: {exc}".encode()
        reason = {431: "Request Header Fields Too Large", 501: "Not Implemented",
                  505: "HTTP Version Not Supported"}.get(exc.status, "Bad Request")
        writer.write(f"HTTP/1.1 {exc.status} {reason}\r\nContent-Type: text/plain; "
                     f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close"
                     "\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _one(self, conn: _Connection, head: RequestHead) -> bool:
        """Serve one request; whether the connection may carry another."""
        started = time.perf_counter()
        try:
            chunked, length = body_framing(head)
        except BadRequest as exc:
            await self._refuse(conn.writer, exc)
            return False
        body = BodyReader(conn.reader, chunked=chunked, length=length)
        transport = conn.writer.transport
        request = Request(head, body, self.app, transport,  # type: ignore[arg-type]
                          conn.reader, conn.writer)
        if "100-continue" in head.headers.get("Expect", "").lower():
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.match_info = info = self.app.router.resolve(head.method, request.path_safe)
        try:
            response = await self.app.wrap(info.route.handler)(request)
            if not isinstance(response, StreamResponse):
                raise TypeError(f"handler returned {type(response).__name__}, "
                                "not a response")
        except BadRequest as exc:
            if request.response is None:
                await self._refuse(conn.writer, exc)
            return False
        except HTTPException as exc:
            if request.response is not None:
                return False
            response = Response(status=exc.status, reason=exc.reason, text=exc.text)
        except ConnectionError:
            return False
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            if request.response is not None:
                return False  # the head is out: only closing tells the peer
            response = Response(status=500, text="500 Internal Server Error")
        if request.response is not None and request.response is not response:
            return False  # the handler sent one response and returned another
        try:
            if not response.prepared:
                await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return False
        if self.access_log is not None and self.access_log.isEnabledFor(logging.DEBUG):
            self.access_log.debug("%s %s %s %.1f ms", request.method, request.raw_path,
                                  response.status, (time.perf_counter() - started) * 1000)
        if body.at_eof():
            return request.keep_alive and not self._stopping
        # The handler answered without reading the whole body (an error halfway
        # through an upload): read and drop the rest for a while, so that the
        # client, still sending, gets to read the answer instead of a broken
        # pipe (aiohttp's "lingering").
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                ended = await body.discard(1 << 62)
        except (BadRequest, TimeoutError):
            return False
        return ended and request.keep_alive and not self._stopping
