"""Port-forward into a pod: SPDY pairs, several ports, concurrency, websocket tunnel."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import aiohttp

from tests.cri.streaming.spdy_client import ClientStream, SpdyClient

MIB = 1 << 20


def forward_url(cri: Any, sandbox: str, ports: list[int]) -> str:
    return str(cri.runtime.PortForward(cri.pb.PortForwardRequest(
        pod_sandbox_id=sandbox, port=ports)).url)


async def open_pair(client: SpdyClient, port: int, request_id: int) -> tuple[ClientStream,
                                                                          ClientStream]:
    headers = {"port": str(port), "requestID": str(request_id)}
    error = await client.open({"streamType": "error", **headers})
    await error.close()
    data = await client.open({"streamType": "data", **headers})
    return error, data


async def echo_through(client: SpdyClient, port: int, request_id: int, payload: bytes) -> bytes:
    error, data = await open_pair(client, port, request_id)
    for start in range(0, len(payload), 32768):
        await data.write(payload[start:start + 32768])
    await data.close()
    echoed = await data.read_all(timeout=120)
    assert await error.read_all() == b""
    return echoed


def echo_pod(cri: Any, cri_image: str, ports: tuple[int, ...]) -> str:
    # busybox nc: -ll with -e serves connection after connection.
    script = " ".join(f"nc -ll -p {p} -e cat &" for p in ports) + " wait"
    sandbox, container = cri.run_container(cri_image, ["sh", "-c", script])
    listening = ""
    for _ in range(100):
        listening = cri.exec(container, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout.decode()
        if all(f":{p:04X} 00000000:0000 0A" in listening or
               f":{p:04X} 00000000000000000000000000000000:0000 0A" in listening
               for p in ports):
            return str(sandbox)
        time.sleep(0.1)
    raise AssertionError(f"nc did not listen: {listening}")


async def test_port_forward_moves_10_mib_both_ways(cri: Any, cri_image: str) -> None:
    sandbox = echo_pod(cri, cri_image, (8080,))
    client = await SpdyClient.connect(forward_url(cri, sandbox, [8080]),
                                      ["portforward.k8s.io"])
    payload = os.urandom(10 * MIB)
    echoed = await echo_through(client, 8080, 1, payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    await client.close()


async def test_port_forward_serves_several_ports_concurrently(cri: Any, cri_image: str) -> None:
    sandbox = echo_pod(cri, cri_image, (8080, 9090))
    client = await SpdyClient.connect(forward_url(cri, sandbox, [8080, 9090]),
                                      ["portforward.k8s.io"])
    payloads = [os.urandom(256 * 1024 + i) for i in range(6)]
    echoed = await asyncio.gather(*(
        echo_through(client, (8080, 9090)[i % 2], i, p) for i, p in enumerate(payloads)))
    assert echoed == payloads
    await client.close()


async def test_port_forward_to_a_closed_port_reports_on_the_error_stream(
        cri: Any, cri_image: str) -> None:
    sandbox = echo_pod(cri, cri_image, (8080,))
    client = await SpdyClient.connect(forward_url(cri, sandbox, [81]), ["portforward.k8s.io"])
    error, data = await open_pair(client, 81, 1)
    message = await error.read_all()
    assert b"localhost:81" in message and b"refused" in message.lower()
    assert await data.read_all() == b""
    # The session still serves a good port afterwards.
    assert await echo_through(client, 8080, 2, b"still here") == b"still here"
    await client.close()


async def test_port_forward_tunnelled_in_websocket(cri: Any, cri_image: str) -> None:
    sandbox = echo_pod(cri, cri_image, (8080,))
    url = forward_url(cri, sandbox, [8080]).replace("http://", "ws://")
    payload = os.urandom(2 * MIB)
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url, protocols=("SPDY/3.1+portforward.k8s.io",)) as ws:
        assert ws.protocol == "SPDY/3.1+portforward.k8s.io"
        client = SpdyClient(_TunnelStreams(ws), _TunnelWriter(ws),  # type: ignore[arg-type]
                            "portforward.k8s.io")
        echoed = await echo_through(client, 8080, 1, payload)
        assert echoed == payload
        client._pump.cancel()


class _TunnelStreams:
    """The StreamReader face of a websocket carrying SPDY bytes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def read(self, n: int) -> bytes:
        message = await self.ws.receive()
        if message.type == aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        return b""


class _TunnelWriter:
    """The StreamWriter face of a websocket carrying SPDY bytes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.pending.append(data)

    async def drain(self) -> None:
        while self.pending:
            await self.ws.send_bytes(self.pending.pop(0))

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass
