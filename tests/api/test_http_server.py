"""The API's HTTP/1.1 and websocket server (runtime.pkg.http), spoken to byte by byte."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from runtime.pkg.http import web
from runtime.pkg.http.websocket import accept_key

Scenario = Callable[[str], Awaitable[None]]


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, headers={"X-Method": request.method,
                                            "X-Name": request.match_info.get("name", "")})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for part in (b"one\n", b"two\n"):
        await response.write(part)
    await response.write_eof()
    return response


async def refuse(request: web.Request) -> web.Response:
    return web.Response(status=507, text="full")


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


async def socket_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=1024)
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str("text:" + message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(b"bin:" + message.data)
        else:
            await ws.send_str(f"error:{ws.close_code}")
            break
    await ws.close()
    return ws


def _app() -> web.Application:
    app = web.Application(client_max_size=4096)
    app.router.add_route("POST", "/echo", echo)
    app.router.add_route("PUT", "/echo", echo)
    app.router.add_route("GET", "/things/{name}", echo)
    app.router.add_route("GET", "/refs/{name:.+}", echo)
    app.router.add_route("GET", "/stream", stream)
    app.router.add_route("GET", "/crash", crash)
    app.router.add_route("POST", "/refuse", refuse)
    app.router.add_route("GET", "/ws", socket_handler)
    return app


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[str, web.HttpServer]]:
    path = str(tmp_path / "api.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    server = web.HttpServer(_app())
    await server.serve_socket(sock)
    try:
        yield path, server
    finally:
        await server.shutdown(timeout=1.0)


async def exchange(path: str, data: bytes) -> bytes:
    """Send ``data`` and half-close, then read until the server closes the connection."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    writer.write_eof()
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def run(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (path, _):
            await scenario(path)

    asyncio.run(main())


def test_keep_alive_serves_requests_in_turn_on_one_connection(tmp_path: Path) -> None:
    async def scenario(path: str) -> None:
        answer = await exchange(
            path,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n1;ext=1\r\nf\r\n0\r\n\r\n"
            b"GET /things/a%2Fb HTTP/1.1\r\nConnection: close\r\n\r\n")
        responses = answer.split(b"HTTP/1.1 ")[1:]
        assert [r.split(b" ")[0] for r in responses] == [b"200", b"200", b"200"]
        assert responses[0].endswith(b"\r\n\r\nabc")
        assert b"X-Method: PUT" in responses[1] and responses[1].endswith(b"\r\n\r\ndef")
        assert b"X-Name: a/b" in responses[2] and b"Connection: close" in responses[2]

    run(tmp_path, scenario)


def test_routes_match_as_aiohttp_does(tmp_path: Path) -> None:
    async def scenario(path: str) -> None:
        slash = await exchange(path, b"GET /things/a/b HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert slash.startswith(b"HTTP/1.1 404 ")
        regex = await exchange(path, b"GET /refs/a/b%20c HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b"X-Name: a/b c" in regex
        wrong = await exchange(path, b"DELETE /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert wrong.startswith(b"HTTP/1.1 405 ")

    run(tmp_path, scenario)


def test_an_answer_before_the_body_is_read_reaches_a_client_still_sending(
        tmp_path: Path) -> None:
    async def scenario(path: str) -> None:
        size = 8 << 20
        answer = await exchange(path, b"POST /refuse HTTP/1.1\r\nConnection: close\r\n"
                                      b"Content-Length: %d\r\n\r\n" % size + bytes(size))
        assert answer.startswith(b"HTTP/1.1 507 ") and answer.endswith(b"full")

    run(tmp_path, scenario)


def test_streamed_response_is_chunked_and_head_has_no_body(tmp_path: Path) -> None:
    async def scenario(path: str) -> None:
        answer = await exchange(path, b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in answer
        assert answer.endswith(b"\r\n\r\n4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n")
        old = await exchange(path, b"GET /stream HTTP/1.0\r\n\r\n")
        assert old.endswith(b"\r\n\r\none\ntwo\n")

    run(tmp_path, scenario)


def test_malformed_requests_are_answered_400_and_the_server_stays_up(tmp_path: Path) -> None:
    hostile = {
        b"GARBAGE\r\n\r\n": b"400",
        b"GET /echo HTTP/9.9\r\n\r\n": b"505",
        b"GET /echo HTTP/1.1\r\nBad Header: x\r\n\r\n": b"400",
        b"GET /echo HTTP/1.1\r\n folded\r\n\r\n": b"400",
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n": b"400",
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n": b"400",
        b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n": b"400",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n": b"501",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": b"400",
        b"GET /x" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n": b"431",
        b"GET /echo HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n": b"431",
        b"POST /echo HTTP/1.1\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
        + b"a" * 5000: b"413",
        b"GET /crash HTTP/1.1\r\nConnection: close\r\n\r\n": b"500",
    }

    async def scenario(path: str) -> None:
        for request, status in hostile.items():
            answer = await exchange(path, request)
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), (request[:40], answer[:80])
        # A peer that goes away mid-head or mid-body harms nobody.
        cut = await exchange(path, b"POST /echo HTTP/1.1\r\nContent-")
        assert cut.startswith(b"HTTP/1.1 400 ")
        ok = await exchange(path, b"POST /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ")

    run(tmp_path, scenario)


def _client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", first, 0x80 | n) + key + masked
    return struct.pack("!BBH", first, 0x80 | 126, n) + key + masked


async def _server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    assert not second & 0x80  # the server never masks
    return first & 0x0F, await reader.readexactly(n)


async def _upgrade(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    writer.write(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head
    assert accept_key(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's own example
    return reader, writer


def test_websocket_fragments_ping_and_close(tmp_path: Path) -> None:
    async def scenario(path: str) -> None:
        reader, writer = await _upgrade(path)
        writer.write(_client_frame(0x1, b"hel", fin=False) + _client_frame(0x9, b"p")
                     + _client_frame(0x0, b"lo") + _client_frame(0x2, b"\x00\x01"))
        assert await _server_frame(reader) == (0xA, b"p")
        assert await _server_frame(reader) == (0x1, b"text:hello")
        assert await _server_frame(reader) == (0x2, b"bin:\x00\x01")
        writer.write(_client_frame(0x8, struct.pack("!H", 1000)))
        opcode, payload = await _server_frame(reader)
        assert opcode == 0x8 and payload[:2] == struct.pack("!H", 1000)
        assert await reader.read() == b""
        writer.close()

    run(tmp_path, scenario)


def test_websocket_refuses_oversized_and_unmasked_messages(tmp_path: Path) -> None:
    async def scenario(path: str) -> None:
        reader, writer = await _upgrade(path)
        writer.write(_client_frame(0x2, b"x" * 2000))
        opcode, payload = await _server_frame(reader)
        assert opcode == 0x8 and payload[:2] == struct.pack("!H", 1009)
        writer.close()
        reader, writer = await _upgrade(path)
        writer.write(struct.pack("!BB", 0x81, 1) + b"x")
        opcode, payload = await _server_frame(reader)
        assert opcode == 0x8 and payload[:2] == struct.pack("!H", 1002)
        writer.close()
        plain = await exchange(path, b"GET /ws HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 400 ")

    run(tmp_path, scenario)


def test_shutdown_closes_idle_keep_alive_connections(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (path, server):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            await server.shutdown(timeout=5.0)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    asyncio.run(main())
