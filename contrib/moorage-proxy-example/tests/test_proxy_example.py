"""The example proxy server and Moorage's proxy client, together.

The conformance suite runs through the client, over the socket, against the
native snapshotter the example serves; the other tests pin the protocol's
error shape and what a stalled or missing proxy does to its caller.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from moorage_proxy_example.server import build_app, start

from runtime.core.errors import InvalidArgument, NotFound, Unavailable
from runtime.core.proxy import ProxyTarget
from runtime.plugins.snapshots.api import Snapshotter
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.proxy.client import ProxySnapshotter, connect
from runtime.testing.snapshotter import SnapshotterConformance

pytest_plugins = ["runtime.testing.snapshotter"]


def target(socket: Path, name: str = "example", timeout: float = 10.0) -> ProxyTarget:
    return ProxyTarget(
        name=name, type="snapshotter", address=f"unix://{socket}", path=str(socket),
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture
async def served(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Path]:
    """The example app serving a fresh native snapshotter; yields the socket."""
    native = NativeSnapshotter(tmp_path / "native")
    socket = socket_dir / "p.sock"
    runner = await start(build_app(native), socket)
    yield socket
    await runner.cleanup()
    await native.close()


@pytest.fixture
async def client(served: Path) -> AsyncIterator[ProxySnapshotter]:
    sn = await connect(target(served))
    yield sn
    await sn.close()


@pytest.fixture
async def snapshotter(require_root: None, client: ProxySnapshotter) -> AsyncIterator[Snapshotter]:
    yield client


class TestNativeThroughProxy(SnapshotterConformance):
    pass


# -- the protocol ----------------------------------------------------------------


async def raw(socket: Path, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as session,
        session.request(method, f"http://proxy{path}", data=body) as response,
    ):
        return response.status, await response.json()


async def test_health_names_the_protocol_and_type(served: Path) -> None:
    assert await raw(served, "GET", "/health") == (200, {"protocol": 1, "types": ["snapshotter"]})


async def test_prepare_answers_mounts(served: Path) -> None:
    status, body = await raw(served, "POST", "/snapshotter/prepare", b'{"key": "k"}')
    assert status == 200
    [mount] = body["mounts"]
    assert (mount["type"], mount["options"]) == ("bind", ["rw", "rbind"])


async def test_error_reply_has_the_one_shape_and_status(served: Path) -> None:
    status, body = await raw(served, "POST", "/snapshotter/stat", b'{"key": "missing"}')
    assert (status, body) == (
        404, {"error": {"code": "not_found", "message": "snapshot 'missing' does not exist"}},
    )  # fmt: skip


async def test_malformed_body_is_invalid_argument(served: Path) -> None:
    status, body = await raw(served, "POST", "/snapshotter/stat", b'{"kee": 1}')
    assert status == 400
    assert body["error"]["code"] == "invalid_argument"
    assert "missing required field `key`" in body["error"]["message"]


async def test_client_raises_the_class_and_message_the_server_sent(
    client: ProxySnapshotter,
) -> None:
    with pytest.raises(NotFound) as caught:
        await client.stat("missing")
    assert caught.value.message == "snapshot 'missing' does not exist"
    with pytest.raises(InvalidArgument):
        await client.walk("kind==")


async def test_closed_client_is_unavailable(client: ProxySnapshotter) -> None:
    await client.close()
    with pytest.raises(Unavailable, match=r"^proxy example client is closed$"):
        await client.stat("a")


# -- stalls and absences ---------------------------------------------------------


class Stalled:
    """A snapshotter whose every method hangs: a proxy that stopped answering."""

    def __getattr__(self, name: str) -> Callable[..., Awaitable[None]]:
        async def stall(*args: Any, **kwargs: Any) -> None:
            await anyio.sleep_forever()

        return stall


async def ticking(during: Callable[[], Awaitable[None]]) -> int:
    """Run ``during`` while counting 10 ms ticks: the loop must not freeze."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            await during()
        finally:
            tg.cancel_scope.cancel()
    return ticks


async def test_stalled_call_is_unavailable_within_the_timeout(socket_dir: Path) -> None:
    socket = socket_dir / "stalled.sock"
    runner = await start(build_app(Stalled()), socket, shutdown_timeout=0.1)  # type: ignore[arg-type]
    try:
        client = await connect(target(socket, name="stalled", timeout=0.5))
        started = time.monotonic()

        async def call() -> None:
            with pytest.raises(Unavailable) as caught:
                await client.prepare("k")
            assert caught.value.message == "proxy stalled did not answer within 0.5s"

        ticks = await ticking(call)
        assert 0.5 <= time.monotonic() - started < 2.0
        assert ticks >= 20
        await client.close()
    finally:
        await runner.cleanup()


async def test_stalled_health_probe_fails_connect_within_the_timeout(socket_dir: Path) -> None:
    async def health(_: web.Request) -> web.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/health", health)
    socket = socket_dir / "slow.sock"
    runner = await start(app, socket, shutdown_timeout=0.1)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"^proxy slow did not answer within 0\.3s$"):
            await connect(target(socket, name="slow", timeout=0.3))
        assert time.monotonic() - started < 2.0
    finally:
        await runner.cleanup()


async def test_missing_socket_fails_connect(socket_dir: Path) -> None:
    socket = socket_dir / "none.sock"
    with pytest.raises(Unavailable) as caught:
        await connect(target(socket, name="gone"))
    assert caught.value.message == (
        f"proxy gone at unix://{socket} is unreachable: No such file or directory"
    )


async def test_server_of_another_type_fails_connect(socket_dir: Path) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"protocol": 1, "types": ["content"]})

    app = web.Application()
    app.router.add_get("/health", health)
    socket = socket_dir / "other.sock"
    runner = await start(app, socket)
    try:
        with pytest.raises(Unavailable, match="serves protocol 1 for \\['content'\\]"):
            await connect(target(socket, name="other"))
    finally:
        await runner.cleanup()
