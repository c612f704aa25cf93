"""Websocket port-forward in numbered channels (data 2n, error 2n+1): the older protocol."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest

from tests.cri.streaming.host_servers import echo_listener, host_server
from tests.cri.streaming.test_portforward import MIB, echo_pod, forward_url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChannelClient:
    """The client side: messages are a channel byte (or digit, base64) and a payload."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, text: bool) -> None:
        self.ws, self.text = ws, text
        self.received: dict[int, bytearray] = {}

    async def send(self, channel: int, data: bytes) -> None:
        if self.text:
            await self.ws.send_str(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes((channel,)) + data)

    async def receive(self, timeout: float = 30.0) -> tuple[int, bytes] | None:
        message = await self.ws.receive(timeout)
        if message.type == aiohttp.WSMsgType.BINARY:
            return message.data[0], bytes(message.data[1:])
        if message.type == aiohttp.WSMsgType.TEXT:
            return ord(message.data[0]) - ord("0"), base64.b64decode(message.data[1:])
        return None

    async def first_frames(self, ports: Iterable[int]) -> dict[int, bytes]:
        """The server's opening message on every channel: the port, little-endian."""
        wanted = 2 * len(list(ports))
        first: dict[int, bytes] = {}
        while len(first) < wanted:
            got = await self.receive()
            assert got is not None, "closed before every channel's first frame"
            first[got[0]] = got[1]
        return first

    async def collect(self, channel: int, size: int, timeout: float = 60.0) -> bytes:
        """Read until ``size`` bytes arrived on ``channel``."""
        buffer = self.received.setdefault(channel, bytearray())
        async with asyncio.timeout(timeout):
            while len(buffer) < size:
                got = await self.receive()
                assert got is not None, f"closed after {len(buffer)} of {size} bytes"
                self.received.setdefault(got[0], bytearray()).extend(got[1])
        return bytes(buffer)


async def echo(client: ChannelClient, channel: int, payload: bytes) -> bytes:
    for start in range(0, len(payload), 32768):
        await client.send(channel, payload[start:start + 32768])
    return await client.collect(channel, len(payload))


async def test_each_channel_opens_with_its_port_and_data_echoes() -> None:
    async with echo_listener() as port, host_server() as server, \
            aiohttp.ClientSession() as http, http.ws_connect(
                server.portforward_url("pod", [port]).replace("http://", "ws://"),
                protocols=("v4.channel.k8s.io",)) as ws:
        assert ws.protocol == "v4.channel.k8s.io"
        client = ChannelClient(ws, text=False)
        assert await client.first_frames([port]) == {0: struct.pack("<H", port),
                                                     1: struct.pack("<H", port)}
        # Unknown channels, the error channel and empty messages are ignored.
        await client.send(7, b"nobody listens here")
        await client.send(1, b"the client writes no errors")
        await ws.send_bytes(b"")
        await ws.send_str("text in a binary protocol")
        payload = os.urandom(MIB)
        assert await echo(client, 0, payload) == payload


async def test_ports_from_the_query_with_a_refused_one_reported_on_its_error_channel() -> None:
    refused = closed_port()
    async with echo_listener() as port, host_server() as server, \
            aiohttp.ClientSession() as http:
        url = server.portforward_url("pod").replace("http://", "ws://")
        async with http.ws_connect(f"{url}?port={refused}&port={port}",
                                   protocols=("v4.base64.channel.k8s.io",)) as ws:
            client = ChannelClient(ws, text=True)
            first = await client.first_frames([refused, port])
            assert first[0] == first[1] == struct.pack("<H", refused)
            assert first[2] == first[3] == struct.pack("<H", port)
            message = await client.collect(1, 1)
            assert f"failed to connect to localhost:{refused}".encode() in message
            assert await echo(client, 2, b"second port works") == b"second port works"


async def test_no_subprotocol_means_numbered_channels_and_all_ends_with_the_pod() -> None:
    async def say_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(say_bye, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with host_server() as server, aiohttp.ClientSession() as http, http.ws_connect(
                server.portforward_url("pod", [port]).replace("http://", "ws://")) as ws:
            client = ChannelClient(ws, text=False)
            await client.first_frames([port])
            assert await client.collect(0, 3) == b"bye"
            # The only connection ended: the server closes the websocket.
            assert await client.receive() is None
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("query", ["", "?port=0", "?port=http"])
async def test_missing_or_bad_ports_are_refused_before_the_upgrade(query: str) -> None:
    async with host_server() as server, aiohttp.ClientSession() as http:
        url = server.portforward_url("pod").replace("http://", "ws://") + query
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, protocols=("v4.channel.k8s.io",))
        assert refused.value.status == 400


async def test_numbered_channel_port_forward_into_a_pod(cri: Any, cri_image: str) -> None:
    sandbox = echo_pod(cri, cri_image, (8080, 8081))
    url = forward_url(cri, sandbox, [8080, 8081]).replace("http://", "ws://")
    payload = os.urandom(2 * MIB)
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url, protocols=("portforward.k8s.io",)) as ws:
        client = ChannelClient(ws, text=False)
        await client.first_frames([8080, 8081])
        assert await echo(client, 0, payload) == payload
        assert await echo(client, 2, b"8081 too") == b"8081 too"
