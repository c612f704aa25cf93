"""Serve a Snapshotter over the Moorage proxy protocol (aiohttp, on a unix socket).

The protocol is in ``docs/proxy-protocol.md``: ``GET /health``, then one
``POST /snapshotter/<method>`` per Snapshotter method, JSON in and out, errors
as ``{"error": {"code", "message"}}`` with the HTTP status of the error's class.

Run it::

    moorage-proxy-example --socket /run/moorage-proxy.sock --root /var/lib/moorage-proxy

or embed it (tests do)::

    runner = await start(build_app(NativeSnapshotter(root)), Path("/run/p.sock"))
    ...
    await runner.cleanup()
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
from aiohttp import web

from runtime.core.errors import InvalidArgument, MoorageError
from runtime.plugins.snapshots.api import Snapshotter
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.proxy.protocol import (
    PROTOCOL_VERSION,
    CommitRequest,
    CreateRequest,
    EmptyReply,
    EmptyRequest,
    ErrorDetail,
    ErrorReply,
    Health,
    InfoReply,
    InfosReply,
    KeyRequest,
    MountsReply,
    UpdateRequest,
    UsageReply,
    WalkRequest,
)

__all__ = ["SNAPSHOTTER", "build_app", "main", "start"]

log = logging.getLogger("moorage.proxy.example")

#: Where the app keeps the snapshotter it serves.
SNAPSHOTTER = web.AppKey("snapshotter", Snapshotter)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encoder = msgspec.json.Encoder()


def _reply(status: int, message: msgspec.Struct) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(message), content_type="application/json"
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return _reply(status, ErrorReply(error=ErrorDetail(code=code, message=message)))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure in the protocol's one error shape."""
    try:
        return await handler(request)
    except MoorageError as exc:
        return _error(exc.http_status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else InvalidArgument.code
        return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, MoorageError.code, "internal error; see the proxy's log")


async def _body(request: web.Request, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.read(), type=type_)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InvalidArgument(f"{request.path}: invalid request body: {exc}") from exc


def build_app(snapshotter: Snapshotter) -> web.Application:
    """An app serving ``snapshotter``; closing the app does not close the snapshotter."""
    app = web.Application(middlewares=[error_middleware])
    app[SNAPSHOTTER] = snapshotter
    sn = snapshotter

    async def health(_: web.Request) -> web.Response:
        return _reply(200, Health(protocol=PROTOCOL_VERSION, types=["snapshotter"]))

    async def stat(r: web.Request) -> web.Response:
        req = await _body(r, KeyRequest)
        return _reply(200, InfoReply(info=await sn.stat(req.key)))

    async def update(r: web.Request) -> web.Response:
        req = await _body(r, UpdateRequest)
        return _reply(200, InfoReply(info=await sn.update(req.key, req.labels)))

    async def usage(r: web.Request) -> web.Response:
        req = await _body(r, KeyRequest)
        return _reply(200, UsageReply(usage=await sn.usage(req.key)))

    async def mounts(r: web.Request) -> web.Response:
        req = await _body(r, KeyRequest)
        return _reply(200, MountsReply(mounts=await sn.mounts(req.key)))

    async def prepare(r: web.Request) -> web.Response:
        req = await _body(r, CreateRequest)
        return _reply(200, MountsReply(mounts=await sn.prepare(req.key, req.parent, req.labels)))

    async def view(r: web.Request) -> web.Response:
        req = await _body(r, CreateRequest)
        return _reply(200, MountsReply(mounts=await sn.view(req.key, req.parent, req.labels)))

    async def commit(r: web.Request) -> web.Response:
        req = await _body(r, CommitRequest)
        await sn.commit(req.name, req.key, req.labels)
        return _reply(200, EmptyReply())

    async def remove(r: web.Request) -> web.Response:
        await sn.remove((await _body(r, KeyRequest)).key)
        return _reply(200, EmptyReply())

    async def walk(r: web.Request) -> web.Response:
        req = await _body(r, WalkRequest)
        return _reply(200, InfosReply(infos=await sn.walk(*req.filters)))

    async def cleanup(r: web.Request) -> web.Response:
        await _body(r, EmptyRequest)
        await sn.cleanup()
        return _reply(200, EmptyReply())

    app.router.add_get("/health", health)
    for handler in (stat, update, usage, mounts, prepare, view, commit, remove, walk, cleanup):
        app.router.add_post(f"/snapshotter/{handler.__name__}", handler)
    return app


async def start(
    app: web.Application, socket: Path, *, shutdown_timeout: float = 2.0
) -> web.AppRunner:
    """Listen on ``socket`` (a stale file is replaced); returns the runner to ``cleanup()``.

    Handlers of clients that went away are cancelled: a daemon whose call
    timed out has already reported it, so finishing the work helps nobody.
    """
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    socket.unlink(missing_ok=True)
    await web.UnixSite(runner, str(socket)).start()
    return runner


async def _serve(socket: Path, root: Path) -> None:
    snapshotter = NativeSnapshotter(root)
    runner = await start(build_app(snapshotter), socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving the native snapshotter of %s on unix://%s", root, socket)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await snapshotter.close()
        socket.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``moorage-proxy-example --socket PATH --root DIR``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="moorage-proxy-example", description=__doc__)
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument("--root", required=True, type=Path, help="the snapshotter's directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args.socket, args.root))
    return 0
