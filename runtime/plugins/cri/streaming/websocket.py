"""Remote-command over a websocket, and SPDY tunnelled in one (port-forward).

Remote-command subprotocols ``v5.channel.k8s.io``, ``v4.channel.k8s.io``,
``channel.k8s.io`` and their base64 forms: the first byte of a message names
the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize), and v5's
``[255, channel]`` half-closes one. In the base64 forms a message is text:
the channel as the character ``'0' + channel``, then the payload in base64.

``SPDY/3.1+portforward.k8s.io`` carries a whole SPDY session in binary
messages, as newer clients forward ports; the older numbered-channel
port-forward is :mod:`runtime.plugins.cri.streaming.wsportforward`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from aiohttp import WSMessage, WSMsgType, web

from runtime.plugins.cri.streaming.remotecommand import CommandStreams, OutputSink
from runtime.plugins.cri.streaming.session import SpdySession
from runtime.plugins.cri.streaming.tokens import AttachRequest, ExecRequest

__all__ = ["WS_COMMAND_PROTOCOLS", "WS_PORT_FORWARD_PROTOCOL", "WsChannel",
           "channel_message", "serve_spdy_tunnel", "serve_ws_command"]

log = logging.getLogger("moorage.cri.streaming")

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

#: Runs one exec or attach on the streams given.
RunCommand = Callable[[CommandStreams], Awaitable[None]]


class WsChannel:
    """One output channel of a channel-multiplexed websocket (binary or base64 text)."""

    def __init__(self, ws: web.WebSocketResponse, channel: int, text: bool) -> None:
        self._ws, self._channel, self._text = ws, channel, text

    async def send(self, data: bytes) -> None:
        """One message: the channel, then ``data``."""
        if self._text:
            await self._ws.send_str(chr(ord("0") + self._channel)
                                    + base64.b64encode(data).decode())
        else:
            await self._ws.send_bytes(bytes((self._channel,)) + data)

    async def close(self) -> None:
        """Nothing: channels end with the websocket.

        Clients before v5 know no other end, and v5 clients take a server's
        close signal for an unknown channel.
        """
        return None


def channel_message(message: WSMessage, text: bool) -> bytes | None:
    """``channel byte + payload`` of a received message; None for anything else."""
    if message.type == WSMsgType.BINARY:
        return bytes(message.data) or None
    if message.type == WSMsgType.TEXT and text and message.data:
        channel = ord(message.data[0]) - ord("0")
        if not 0 <= channel <= 255:
            return None
        try:
            return bytes((channel,)) + base64.b64decode(message.data[1:], validate=True)
        except ValueError:
            return None
    return None


def _reader(stream: anyio.abc.ObjectReceiveStream[bytes]) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        try:
            return await stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""
    return read


async def serve_ws_command(ws: web.WebSocketResponse, found: ExecRequest | AttachRequest,
                           protocol: str, run_command: RunCommand) -> None:
    """One exec or attach over a prepared websocket of ``protocol``."""
    status_json, text, close_signal = WS_COMMAND_PROTOCOLS[protocol]
    stdin_send, stdin_receive = anyio.create_memory_object_stream[bytes](16)
    resize_send, resize_receive = anyio.create_memory_object_stream[bytes](16)

    def output(channel: int) -> OutputSink:
        return WsChannel(ws, channel, text)

    command = CommandStreams(
        stdin=_reader(stdin_receive) if found.stdin else None,
        stdout=output(_STDOUT) if found.stdout else None,
        stderr=output(_STDERR) if found.stderr and not found.tty else None,
        resize=_reader(resize_receive) if found.tty else None,
        error=output(_ERROR), status_json=status_json)
    # The kubelet's first message: an empty one on the lowest output channel.
    first = _STDOUT if found.stdout else (_STDERR if found.stderr else _ERROR)
    await output(first).send(b"")

    async def demultiplex() -> None:
        with stdin_send, resize_send:
            async for message in ws:
                data = channel_message(message, text)
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
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    await target.send(payload)
        command.client_gone.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(demultiplex)
        await run_command(command)
        tg.cancel_scope.cancel()


async def serve_spdy_tunnel(ws: web.WebSocketResponse, idle_timeout: float,
                            serve: Callable[[SpdySession], Awaitable[None]]) -> None:
    """A SPDY session in the websocket's binary messages, served by ``serve``."""
    session = SpdySession(ws.send_bytes, idle_timeout=idle_timeout)

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
        await serve(session)
        tg.cancel_scope.cancel()
