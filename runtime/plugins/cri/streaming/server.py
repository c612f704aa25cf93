"""The streaming HTTP server the CRI Exec, Attach and PortForward URLs point at.

``GET|POST /exec/TOKEN``, ``/attach/TOKEN`` and ``/portforward/TOKEN`` upgrade to

* **SPDY/3.1** (``Upgrade: SPDY/3.1``, the default of crictl and the kubelet),
  with ``X-Stream-Protocol-Version`` negotiated in the client's order among
  ``v4.channel.k8s.io`` ... ``channel.k8s.io`` (exec, attach) or
  ``portforward.k8s.io``; aiohttp answers 101 and the connection is then
  taken over from it (aiohttp's parser upgrades only to websocket);
* **websocket**, subprotocols ``v5.channel.k8s.io``, ``v4.channel.k8s.io``,
  ``channel.k8s.io`` and their base64 forms (exec, attach), where the first
  byte of a message names the channel (0 stdin, 1 stdout, 2 stderr, 3 error,
  4 resize) and v5's ``[255, channel]`` half-closes one; or
  ``SPDY/3.1+portforward.k8s.io``, SPDY carried in binary messages
  (port-forward).

A bad token, a missing upgrade, an unknown subprotocol is a plain HTTP error
(404, 400, 403) with a message; protocol errors afterwards end that session
only (GOAWAY, RST_STREAM, a websocket close).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiohttp import WSMsgType, web

from runtime.core.errors import InvalidArgument, MoorageError
from runtime.plugins.cri.streaming.portforward import dial_in_netns, serve_port_forward
from runtime.plugins.cri.streaming.remotecommand import (
    CommandStreams,
    OutputSink,
    run_attach,
    run_exec,
)
from runtime.plugins.cri.streaming.session import SpdySession, SpdyStream
from runtime.plugins.cri.streaming.spdy import RstStatus
from runtime.plugins.cri.streaming.tokens import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    TokenCache,
)
from runtime.plugins.runtime.api import Runtime

__all__ = ["StreamingServer"]

log = logging.getLogger("moorage.cri.streaming")

#: SPDY remote-command protocols, newest first, with their version number.
SPDY_COMMAND_PROTOCOLS = {"v4.channel.k8s.io": 4, "v3.channel.k8s.io": 3,
                          "v2.channel.k8s.io": 2, "channel.k8s.io": 1}
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
#: Websocket remote-command subprotocols: (status as JSON, base64 text, v5 close signal).
WS_COMMAND_PROTOCOLS = {
    "v5.channel.k8s.io": (True, False, True),
    "v4.channel.k8s.io": (True, False, False),
    "v4.base64.channel.k8s.io": (True, True, False),
    "channel.k8s.io": (False, False, False),
    "base64.channel.k8s.io": (False, True, False),
}
WS_PORT_FORWARD_PROTOCOL = "SPDY/3.1+portforward.k8s.io"

_STDIN, _STDOUT, _STDERR, _ERROR, _RESIZE, _CLOSE = 0, 1, 2, 3, 4, 255


class _RawConnection(asyncio.Protocol):
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
        self._buffer += data
        self._wake()
        if len(self._buffer) > self._HIGH_WATER and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        self._wake()
        self._writable.set()
        self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
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
        if self._lost or self._transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self._transport.write(data)
        await self._writable.wait()
        if self._lost:
            raise ConnectionResetError("the client closed the connection")

    def close(self) -> None:
        self._transport.close()


class _SpdyOutput:
    """An output stream of remote-command over SPDY."""

    def __init__(self, stream: SpdyStream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    async def close(self) -> None:
        await self._stream.close()


class _WsOutput:
    """An output channel of remote-command over a websocket."""

    def __init__(self, ws: web.WebSocketResponse, channel: int, text: bool) -> None:
        self._ws, self._channel, self._text = ws, channel, text

    async def send(self, data: bytes) -> None:
        if self._text:
            await self._ws.send_str(str(self._channel) + base64.b64encode(data).decode())
        else:
            await self._ws.send_bytes(bytes((self._channel,)) + data)

    async def close(self) -> None:
        # Channels end with the websocket: clients before v5 know no other end,
        # and v5 clients take a server's close signal for an unknown channel.
        return None


def _offered(request: web.Request, header: str) -> list[str]:
    return [value.strip() for line in request.headers.getall(header, [])
            for value in line.split(",") if value.strip()]


def _upgrade_kind(request: web.Request) -> str:
    connection = {v.lower() for v in _offered(request, "Connection")}
    upgrade = {v.lower() for v in _offered(request, "Upgrade")}
    if "upgrade" in connection and "websocket" in upgrade:
        return "websocket"
    if "upgrade" in connection and "spdy/3.1" in upgrade:
        return "spdy"
    return ""


class StreamingServer:
    """The streaming server of the ``cri.v1`` plugin.

    Args:
        address: Address to bind (``stream_address``).
        port: Port to bind; 0 picks a free one (``stream_port``).
        namespace: The Moorage namespace CRI containers live in.
        runtime: Runs the execs and attaches (the Runtime protocol).
        netns_path: A sandbox's network namespace path; None for a host-network
            pod; raises NotFound for an unknown sandbox.
        token_ttl: Seconds a URL stays valid.
        stream_creation_timeout: Seconds a client has to open its streams.
        stream_idle_timeout: Seconds without traffic before a session ends.
        hangup_grace: Seconds the server waits, once a command has ended, for
            the client to hang up first (so no unread input resets the
            connection under output the client has not read yet).
    """

    def __init__(self, *, address: str = "127.0.0.1", port: int = 0, namespace: str,
                 runtime: Runtime, netns_path: Callable[[str], str | None],
                 token_ttl: float = 60.0, stream_creation_timeout: float = 30.0,
                 stream_idle_timeout: float = 4 * 3600.0, hangup_grace: float = 5.0) -> None:
        self.address = address
        self.port = port
        self.namespace = namespace
        self.runtime = runtime
        self.netns_path = netns_path
        self.tokens = TokenCache(ttl=token_ttl)
        self.stream_creation_timeout = stream_creation_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.hangup_grace = hangup_grace
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the URLs handed out."""
        host = self.address
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            if ip.is_unspecified:
                host = "127.0.0.1" if ip.version == 4 else "::1"
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return f"http://{host or '127.0.0.1'}:{self.port}"

    async def start(self) -> None:
        """Bind and serve."""
        app = web.Application()
        for kind in ("exec", "attach", "portforward"):
            handler = self._handler(kind)
            app.router.add_route("GET", f"/{kind}/{{token}}", handler)
            app.router.add_route("POST", f"/{kind}/{{token}}", handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, self.address, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        """End every session and stop listening."""
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=15.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- URLs -----------------------------------------------------------------

    @staticmethod
    def _check_streams(*, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        if not (stdin or stdout or stderr):
            raise InvalidArgument("one of stdin, stdout or stderr must be set")
        if tty and stderr:
            raise InvalidArgument("tty and stderr cannot both be true")

    def exec_url(self, container_id: str, cmd: list[str], *, tty: bool = False,
                 stdin: bool = False, stdout: bool = False, stderr: bool = False) -> str:
        """The URL of one exec of ``cmd`` in the container."""
        if not cmd:
            raise InvalidArgument("cmd must not be empty")
        self._check_streams(tty=tty, stdin=stdin, stdout=stdout, stderr=stderr)
        token = self.tokens.issue(ExecRequest(container_id=container_id, cmd=tuple(cmd),
                                              tty=tty, stdin=stdin, stdout=stdout,
                                              stderr=stderr))
        return f"{self.base_url}/exec/{token}"

    def attach_url(self, container_id: str, *, tty: bool = False, stdin: bool = False,
                   stdout: bool = False, stderr: bool = False) -> str:
        """The URL of one attach to the container's process."""
        self._check_streams(tty=tty, stdin=stdin, stdout=stdout, stderr=stderr)
        token = self.tokens.issue(AttachRequest(container_id=container_id, tty=tty,
                                                stdin=stdin, stdout=stdout, stderr=stderr))
        return f"{self.base_url}/attach/{token}"

    def portforward_url(self, sandbox_id: str, ports: list[int] | tuple[int, ...] = ()) -> str:
        """The URL of one port-forward session into the sandbox."""
        token = self.tokens.issue(PortForwardRequest(sandbox_id=sandbox_id,
                                                     ports=tuple(ports)))
        return f"{self.base_url}/portforward/{token}"

    # -- HTTP -----------------------------------------------------------------

    def _handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        expected = {"exec": ExecRequest, "attach": AttachRequest,
                    "portforward": PortForwardRequest}[kind]

        async def handle(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                found = self.tokens.consume(request.match_info["token"])
                if found is None or not isinstance(found, expected):
                    return web.Response(status=404, text=f"{kind}: unknown, used or expired "
                                                         "token\n")
                return await self._serve(request, found)
            finally:
                self._handlers.discard(task)

        return handle

    async def _serve(self, request: web.Request, found: StreamRequest) -> web.StreamResponse:
        kind = _upgrade_kind(request)
        port_forward = isinstance(found, PortForwardRequest)
        if kind == "websocket":
            offered = _offered(request, "Sec-WebSocket-Protocol")
            supported = [WS_PORT_FORWARD_PROTOCOL] if port_forward else list(WS_COMMAND_PROTOCOLS)
            if not offered and not port_forward:
                offered = ["channel.k8s.io"]
            chosen = next((p for p in offered if p in supported), None)
            if chosen is None:
                return web.Response(status=400, text=(
                    f"unable to upgrade: none of the websocket subprotocols {offered} is "
                    f"supported (supported: {', '.join(supported)})\n"))
            return await self._serve_websocket(request, found, chosen)
        if kind == "spdy":
            supported = [PORT_FORWARD_PROTOCOL] if port_forward else list(
                SPDY_COMMAND_PROTOCOLS)
            offered = _offered(request, "X-Stream-Protocol-Version")
            if not offered:
                return web.Response(status=400, text=(
                    "unable to upgrade: X-Stream-Protocol-Version is required\n"))
            chosen = next((p for p in offered if p in supported), None)
            if chosen is None:
                response = web.Response(status=403, text=(
                    f"unable to upgrade: unable to negotiate protocol: client supports "
                    f"{offered}, server accepts {supported}\n"))
                for protocol in supported:
                    response.headers.add("X-Accepted-Stream-Protocol-Versions", protocol)
                return response
            return await self._serve_spdy(request, found, chosen)
        return web.Response(status=400, text=(
            "unable to upgrade: missing upgrade headers in request (expected Upgrade: "
            "SPDY/3.1 or websocket with Connection: Upgrade)\n"))

    # -- SPDY -----------------------------------------------------------------

    async def _serve_spdy(self, request: web.Request, found: StreamRequest,
                          protocol: str) -> web.StreamResponse:
        response = web.StreamResponse(status=101, reason="Switching Protocols", headers={
            "Connection": "Upgrade", "Upgrade": "SPDY/3.1",
            "X-Stream-Protocol-Version": protocol})
        await response.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            return response
        connection = _RawConnection(transport, request.protocol)  # type: ignore[arg-type]
        transport.set_protocol(connection)
        transport.resume_reading()
        session = SpdySession(connection.write, idle_timeout=self.stream_idle_timeout)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.run, connection.read)
                if isinstance(found, PortForwardRequest):
                    await self._port_forward(session, found)
                else:
                    await self._spdy_command(session, found, SPDY_COMMAND_PROTOCOLS[protocol])
                    # Let the client read it all and hang up first.
                    with anyio.move_on_after(self.hangup_grace):
                        await session.closed.wait()
                tg.cancel_scope.cancel()
        finally:
            connection.close()
        return response

    async def _spdy_command(self, session: SpdySession, found: ExecRequest | AttachRequest,
                            version: int) -> None:
        wanted = {"error"}
        if found.stdin:
            wanted.add("stdin")
        if found.stdout:
            wanted.add("stdout")
        if found.stderr and not found.tty:
            wanted.add("stderr")
        if found.tty and version >= 3:
            wanted.add("resize")
        streams: dict[str, SpdyStream] = {}
        with anyio.move_on_after(self.stream_creation_timeout):
            while not wanted <= streams.keys():
                stream = await session.accept()
                if stream is None:
                    return  # the client left before opening its streams
                kind = stream.header("streamtype")
                if kind in wanted and kind not in streams:
                    streams[kind] = stream
                else:
                    log.info("streaming: unexpected %r stream refused", kind)
                    await stream.reset(RstStatus.REFUSED_STREAM)
        if not wanted <= streams.keys():
            log.info("streaming: timed out waiting for the client to create streams %s",
                     sorted(wanted - streams.keys()))
            await session.go_away()
            return
        async with anyio.create_task_group() as tg:

            async def refuse_more() -> None:
                while (extra := await session.accept()) is not None:
                    await extra.reset(RstStatus.REFUSED_STREAM)

            async def client_gone() -> None:
                await session.closed.wait()
                command.client_gone.set()

            command = CommandStreams(
                stdin=streams["stdin"].receive if "stdin" in streams else None,
                stdout=_SpdyOutput(streams["stdout"]) if "stdout" in streams else None,
                stderr=_SpdyOutput(streams["stderr"]) if "stderr" in streams else None,
                resize=streams["resize"].receive if "resize" in streams else None,
                error=_SpdyOutput(streams["error"]), status_json=version >= 4)
            streams["error"].discard()
            tg.start_soon(refuse_more)
            tg.start_soon(client_gone)
            await self._command(command, found)
            tg.cancel_scope.cancel()

    async def _command(self, command: CommandStreams,
                       found: ExecRequest | AttachRequest) -> None:
        if isinstance(found, ExecRequest):
            await run_exec(command, self.runtime, self.namespace, found.container_id,
                           list(found.cmd), tty=found.tty, stdin=found.stdin)
        else:
            await run_attach(command, self.runtime, self.namespace, found.container_id,
                             tty=found.tty)

    async def _port_forward(self, session: SpdySession, found: PortForwardRequest) -> None:
        try:
            netns = self.netns_path(found.sandbox_id)
        except MoorageError as exc:
            log.info("streaming: port-forward to %s refused: %s", found.sandbox_id, exc)
            netns_error: str | None = exc.message
        else:
            netns_error = None

        async def dial(port: int) -> Any:
            if netns_error is not None:
                raise OSError(0, netns_error)
            return await dial_in_netns(netns, port)

        await serve_port_forward(session, dial, pod=found.sandbox_id,
                                 pair_timeout=self.stream_creation_timeout)

    # -- websocket ------------------------------------------------------------

    async def _serve_websocket(self, request: web.Request, found: StreamRequest,
                               protocol: str) -> web.StreamResponse:
        offered = bool(_offered(request, "Sec-WebSocket-Protocol"))
        ws = web.WebSocketResponse(protocols=(protocol,) if offered else (),
                                   max_msg_size=4 << 20, autoping=True)
        await ws.prepare(request)
        try:
            if isinstance(found, PortForwardRequest):
                await self._ws_port_forward(ws, found)
            else:
                await self._ws_command(ws, found, protocol)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.hangup_grace):
                await ws.close()
        return ws

    async def _ws_port_forward(self, ws: web.WebSocketResponse,
                               found: PortForwardRequest) -> None:
        session = SpdySession(ws.send_bytes, idle_timeout=self.stream_idle_timeout)

        async def receive() -> bytes:
            while True:
                message = await ws.receive()
                if message.type == WSMsgType.BINARY:
                    if message.data:
                        return bytes(message.data)
                    continue
                if message.type == WSMsgType.TEXT:
                    log.info("streaming: text message in a SPDY tunnel; closing it")
                return b""

        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run, receive)
            await self._port_forward(session, found)
            tg.cancel_scope.cancel()

    async def _ws_command(self, ws: web.WebSocketResponse, found: ExecRequest | AttachRequest,
                          protocol: str) -> None:
        status_json, text, close_signal = WS_COMMAND_PROTOCOLS[protocol]
        stdin_send, stdin_receive = anyio.create_memory_object_stream[bytes](16)
        resize_send, resize_receive = anyio.create_memory_object_stream[bytes](16)

        def reader(stream: anyio.abc.ObjectReceiveStream[bytes]) -> Callable[[], Awaitable[bytes]]:
            async def read() -> bytes:
                try:
                    return await stream.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return b""
            return read

        def output(channel: int) -> OutputSink:
            return _WsOutput(ws, channel, text)

        command = CommandStreams(
            stdin=reader(stdin_receive) if found.stdin else None,
            stdout=output(_STDOUT) if found.stdout else None,
            stderr=output(_STDERR) if found.stderr and not found.tty else None,
            resize=reader(resize_receive) if found.tty else None,
            error=output(_ERROR), status_json=status_json)
        # The kubelet's first message: an empty one on the lowest output channel.
        first = _STDOUT if found.stdout else (_STDERR if found.stderr else _ERROR)
        await output(first).send(b"")

        async def demultiplex() -> None:
            with stdin_send, resize_send:
                async for message in ws:
                    if message.type == WSMsgType.BINARY:
                        data = bytes(message.data)
                    elif message.type == WSMsgType.TEXT and text and message.data:
                        try:
                            data = bytes((int(message.data[0]),)) + base64.b64decode(
                                message.data[1:], validate=True)
                        except ValueError:
                            continue
                    else:
                        continue
                    if not data:
                        continue
                    channel, payload = data[0], data[1:]
                    if close_signal and channel == _CLOSE:
                        if payload == bytes((_STDIN,)):
                            stdin_send.close()
                        continue
                    target = {_STDIN: stdin_send, _RESIZE: resize_send}.get(channel)
                    if target is None or not payload:
                        continue
                    with contextlib.suppress(anyio.ClosedResourceError,
                                             anyio.BrokenResourceError):
                        await target.send(payload)
            command.client_gone.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(demultiplex)
            await self._command(command, found)
            tg.cancel_scope.cancel()
