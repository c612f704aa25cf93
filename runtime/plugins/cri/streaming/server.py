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
  4 resize) and v5's ``[255, channel]`` half-closes one (:mod:`.websocket`);
  for port-forward ``SPDY/3.1+portforward.k8s.io``, SPDY carried in binary
  messages, or the older numbered channels (``portforward.k8s.io``,
  ``v4.channel.k8s.io``..., or no subprotocol; :mod:`.wsportforward`).

A bad token, a missing upgrade, an unknown subprotocol is a plain HTTP error
(404, 400, 403) with a message; protocol errors afterwards end that session
only (GOAWAY, RST_STREAM, a websocket close).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiohttp import web

from runtime.core.errors import InvalidArgument, MoorageError
from runtime.plugins.cri.streaming.portforward import Dialer, dial_in_netns, serve_port_forward
from runtime.plugins.cri.streaming.remotecommand import (
    CommandStreams,
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
from runtime.plugins.cri.streaming.upgrade import RawConnection, offered, upgrade_kind
from runtime.plugins.cri.streaming.websocket import (
    WS_COMMAND_PROTOCOLS,
    WS_PORT_FORWARD_PROTOCOL,
    serve_spdy_tunnel,
    serve_ws_command,
)
from runtime.plugins.cri.streaming.wsportforward import (
    WS_CHANNEL_PORT_FORWARD_PROTOCOLS,
    parse_ports,
    serve_ws_channel_port_forward,
)
from runtime.plugins.runtime.api import Runtime

__all__ = ["StreamingServer"]

log = logging.getLogger("moorage.cri.streaming")

#: SPDY remote-command protocols, newest first, with their version number.
SPDY_COMMAND_PROTOCOLS = {"v4.channel.k8s.io": 4, "v3.channel.k8s.io": 3,
                          "v2.channel.k8s.io": 2, "channel.k8s.io": 1}
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"


class _SpdyOutput:
    """An output stream of remote-command over SPDY."""

    def __init__(self, stream: SpdyStream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    async def close(self) -> None:
        await self._stream.close()


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
        kind = upgrade_kind(request)
        port_forward = isinstance(found, PortForwardRequest)
        if kind == "websocket":
            return await self._upgrade_websocket(request, found)
        if kind == "spdy":
            supported = [PORT_FORWARD_PROTOCOL] if port_forward else list(
                SPDY_COMMAND_PROTOCOLS)
            asked = offered(request, "X-Stream-Protocol-Version")
            if not asked:
                return web.Response(status=400, text=(
                    "unable to upgrade: X-Stream-Protocol-Version is required\n"))
            chosen = next((p for p in asked if p in supported), None)
            if chosen is None:
                response = web.Response(status=403, text=(
                    f"unable to upgrade: unable to negotiate protocol: client supports "
                    f"{asked}, server accepts {supported}\n"))
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
        connection = RawConnection(transport, request.protocol)  # type: ignore[arg-type]
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

    def _dialer(self, found: PortForwardRequest) -> Dialer:
        """Dials localhost:PORT in the sandbox's network namespace (or the host's)."""
        try:
            netns = self.netns_path(found.sandbox_id)
        except MoorageError as exc:
            log.info("streaming: port-forward to %s refused: %s", found.sandbox_id, exc)
            netns_error: str | None = exc.message
        else:
            netns_error = None

        async def dial(port: int) -> socket.socket:
            if netns_error is not None:
                raise OSError(0, netns_error)
            return await dial_in_netns(netns, port)

        return dial

    async def _port_forward(self, session: SpdySession, found: PortForwardRequest) -> None:
        await serve_port_forward(session, self._dialer(found), pod=found.sandbox_id,
                                 pair_timeout=self.stream_creation_timeout)

    # -- websocket ------------------------------------------------------------

    async def _upgrade_websocket(self, request: web.Request,
                                 found: StreamRequest) -> web.StreamResponse:
        asked = offered(request, "Sec-WebSocket-Protocol")
        if isinstance(found, PortForwardRequest):
            supported = [WS_PORT_FORWARD_PROTOCOL, *WS_CHANNEL_PORT_FORWARD_PROTOCOLS]
            # No subprotocol at all: the numbered channels, as the kubelet's.
            default = "portforward.k8s.io"
        else:
            supported, default = list(WS_COMMAND_PROTOCOLS), "channel.k8s.io"
        chosen = next((p for p in asked or [default] if p in supported), None)
        if chosen is None:
            return web.Response(status=400, text=(
                f"unable to upgrade: none of the websocket subprotocols {asked} is "
                f"supported (supported: {', '.join(supported)})\n"))
        ports: list[int] = []
        if isinstance(found, PortForwardRequest) and chosen != WS_PORT_FORWARD_PROTOCOL:
            try:
                ports = list(found.ports) or parse_ports(request.query.getall("port", []))
            except InvalidArgument as exc:
                return web.Response(status=400, text=f"unable to upgrade: {exc.message}\n")
        ws = web.WebSocketResponse(protocols=(chosen,) if asked else (),
                                   max_msg_size=4 << 20, autoping=True)
        await ws.prepare(request)
        try:
            if not isinstance(found, PortForwardRequest):
                await serve_ws_command(ws, found, chosen,
                                       lambda command: self._command(command, found))
            elif chosen == WS_PORT_FORWARD_PROTOCOL:
                await serve_spdy_tunnel(ws, self.stream_idle_timeout,
                                        lambda session: self._port_forward(session, found))
            else:
                await serve_ws_channel_port_forward(
                    ws, ports, WS_CHANNEL_PORT_FORWARD_PROTOCOLS[chosen], self._dialer(found),
                    pod=found.sandbox_id)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.hangup_grace):
                await ws.close()
        return ws
