"""Port-forward over a websocket with numbered channels, the protocol before SPDY tunnelling.

The ports are fixed when the session opens: those of the CRI PortForward
request, else the URL's ``?port=`` parameters. Port number ``i`` (in that
order) gets two channels: data ``2i`` and error ``2i+1``; a message is the
channel byte and its payload (or, in the base64 subprotocols, a text message:
``'0' + channel`` and the payload in base64). The server's first message on
each channel is the port as two little-endian bytes. Then each port has one
connection, dialled into the pod when the session opens: the client's data on
``2i`` goes to it and what it sends comes back on ``2i``; a failed dial is a
message on ``2i+1``. The session ends when every connection has ended (the
websocket then closes) or when the client closes it.

Subprotocols: none, ``portforward.k8s.io``, ``v4.channel.k8s.io`` and
``channel.k8s.io`` (binary), ``v4.base64.channel.k8s.io`` and
``base64.channel.k8s.io`` (text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

import anyio
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime.core.errors import InvalidArgument
from runtime.plugins.cri.streaming.portforward import Dialer
from runtime.plugins.cri.streaming.websocket import WsChannel, channel_message

__all__ = ["WS_CHANNEL_PORT_FORWARD_PROTOCOLS", "parse_ports", "serve_ws_channel_port_forward"]

log = logging.getLogger("moorage.cri.streaming")

#: Subprotocol -> whether messages are base64 text.
WS_CHANNEL_PORT_FORWARD_PROTOCOLS = {
    "portforward.k8s.io": False,
    "v4.channel.k8s.io": False,
    "channel.k8s.io": False,
    "v4.base64.channel.k8s.io": True,
    "base64.channel.k8s.io": True,
}
_RECV = 64 * 1024


def parse_ports(values: list[str]) -> list[int]:
    """The ``?port=`` values (each may be comma-separated) as port numbers.

    Raises:
        InvalidArgument: None given, or one is not a port in 1..65535.
    """
    ports = []
    for value in values:
        for part in value.split(","):
            try:
                port = int(part)
            except ValueError:
                raise InvalidArgument(f"invalid port {part!r}") from None
            if not 0 < port < 65536:
                raise InvalidArgument(f"invalid port {port}: not in 1..65535")
            ports.append(port)
    if not ports:
        raise InvalidArgument('query parameter "port" is required')
    return ports


async def serve_ws_channel_port_forward(ws: web.WebSocketResponse, ports: list[int],
                                        text: bool, dial: Dialer, *, pod: str) -> None:
    """Forward each of ``ports`` over its channel pair until all end or the client goes."""
    inbound: list[MemoryObjectSendStream[bytes]] = []
    receivers: list[MemoryObjectReceiveStream[bytes]] = []
    for _ in ports:
        send, receive = anyio.create_memory_object_stream[bytes](16)
        inbound.append(send)
        receivers.append(receive)
    for index, port in enumerate(ports):
        first = struct.pack("<H", port)
        await WsChannel(ws, 2 * index, text).send(first)
        await WsChannel(ws, 2 * index + 1, text).send(first)

    async with anyio.create_task_group() as tg:

        async def demultiplex() -> None:
            with contextlib.ExitStack() as senders:
                for send in inbound:
                    senders.enter_context(send)
                async for message in ws:
                    data = channel_message(message, text)
                    if not data or data[0] % 2 or data[0] // 2 >= len(ports):
                        continue  # only data channels carry client bytes
                    with contextlib.suppress(anyio.ClosedResourceError,
                                             anyio.BrokenResourceError):
                        await inbound[data[0] // 2].send(data[1:])
            # The client went: every connection ends with it.
            tg.cancel_scope.cancel()

        async def all_ports() -> None:
            async with anyio.create_task_group() as forwards:
                for index, port in enumerate(ports):
                    forwards.start_soon(_forward_one, ws, index, port, receivers[index], text,
                                        dial, pod)
            tg.cancel_scope.cancel()

        tg.start_soon(demultiplex)
        tg.start_soon(all_ports)


async def _forward_one(ws: web.WebSocketResponse, index: int, port: int,
                       inbound: MemoryObjectReceiveStream[bytes], text: bool,
                       dial: Dialer, pod: str) -> None:
    data, error = WsChannel(ws, 2 * index, text), WsChannel(ws, 2 * index + 1, text)
    with inbound:
        try:
            sock = await dial(port)
        except OSError as exc:
            message = (f"error forwarding port {port} to pod {pod}: failed to connect to "
                       f"localhost:{port} inside the pod: {exc.strerror}")
            log.info("streaming: port-forward: %s", message)
            with contextlib.suppress(ConnectionError):
                await error.send(message.encode())
            return
        try:
            await _copy(sock, inbound, data)
        finally:
            sock.close()


async def _copy(sock: socket.socket, inbound: MemoryObjectReceiveStream[bytes],
                data: WsChannel) -> None:
    loop = asyncio.get_running_loop()
    async with anyio.create_task_group() as tg:

        async def upstream() -> None:
            # Client -> pod. The client has no half-close here: the pod decides the end.
            with contextlib.suppress(OSError, anyio.EndOfStream):
                async for chunk in inbound:
                    if chunk:
                        await loop.sock_sendall(sock, chunk)

        async def downstream() -> None:
            # Pod -> client; the pod's end-of-file ends this port's connection.
            with contextlib.suppress(OSError, ConnectionError):
                while chunk := await loop.sock_recv(sock, _RECV):
                    await data.send(chunk)
            tg.cancel_scope.cancel()

        tg.start_soon(upstream)
        tg.start_soon(downstream)
