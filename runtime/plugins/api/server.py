"""The admin API server: one app on a unix socket and, optionally, TCP with a token.

It runs on :mod:`runtime.pkg.http`, not aiohttp: importing ``aiohttp.web`` was
most of the daemon's start.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from runtime.api.types import DEFAULT_NAMESPACE, NAMESPACE_HEADER
from runtime.core import listeners
from runtime.core.errors import (
    InvalidArgument,
    MoorageError,
    NotFound,
    NotImplementedYet,
    Unauthenticated,
)
from runtime.core.identifiers import validate_namespace
from runtime.pkg.http import web
from runtime.plugins.api.api import (
    NAMESPACE_KEY,
    STREAM_ENDERS,
    Middleware,
    Route,
    error_response,
)
from runtime.plugins.api.openapi import openapi_document

__all__ = ["ApiServer", "build_app"]

log = logging.getLogger("moorage.api")

_encoder = msgspec.json.Encoder()
TCP_KEY = web.AppKey("tcp_token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _over_tcp(request: web.Request) -> bool:
    # A unix-socket peer has no (host, port) tuple.
    return isinstance(
        request.transport.get_extra_info("peername") if request.transport else None, tuple
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render domain errors, routing misses and crashes as ``{"error": ...}``."""
    try:
        return await handler(request)
    except MoorageError as exc:
        return error_response(exc.http_status, exc.code, exc.message)
    except web.HTTPNotFound:
        return error_response(404, NotFound.code, f"no endpoint {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        # gRPC's UNIMPLEMENTED (containerd's NotImplemented) is the vocabulary's word for a
        # method a service does not offer; its one status, 501, keeps the code <-> status
        # table that the client relies on. Allow still tells HTTP tools what would work.
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(
            NotImplementedYet.http_status,
            NotImplementedYet.code,
            f"{request.method} not allowed on {request.path}; allowed: {allowed}",
        )
        response.headers["Allow"] = allowed
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, "invalid_argument", exc.reason)
    except (ConnectionResetError, BrokenPipeError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, MoorageError.code, "internal error; see the daemon log")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests over TCP must carry the bearer token; the unix socket relies on its mode."""
    if _over_tcp(request):
        token = request.app[TCP_KEY]
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # compare_digest keeps the comparison time independent of where they differ.
        import hmac

        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise Unauthenticated("missing or wrong bearer token")
    return await handler(request)


@web.middleware
async def namespace_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Validate the namespace header once, for every handler."""
    namespace = request.headers.get(NAMESPACE_HEADER, DEFAULT_NAMESPACE)
    try:
        request[NAMESPACE_KEY] = validate_namespace(namespace)
    except InvalidArgument as exc:
        raise InvalidArgument(f"header {NAMESPACE_HEADER}: {exc}") from None
    return await handler(request)


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        result = await route.handler(request)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None and route.response is None:
            return web.Response(status=204)
        return web.Response(
            status=route.status, body=_encoder.encode(result), content_type="application/json"
        )

    return handle


def build_app(routes: list[Route], *, version: str, token: str = "",
              middlewares: Sequence[Middleware] = ()) -> web.Application:
    """An application serving ``routes`` plus ``GET /v1/openapi.json``.

    ``middlewares`` (from route sets) wrap the built-in ones, so they see
    every request with its final status, errors rendered.
    """
    stack: list[Middleware] = [*middlewares, error_middleware, auth_middleware,
                               namespace_middleware]
    app = web.Application(
        middlewares=stack,
        client_max_size=64 * 1024 * 1024,
    )
    app[TCP_KEY] = token
    enders: set[Callable[[], None]] = set()
    app[STREAM_ENDERS] = enders

    async def end_streams(_: web.Application) -> None:
        for end in list(enders):
            end()

    app.on_shutdown.append(end_streams)
    doc_holder: dict[str, bytes] = {}

    async def openapi(_: web.Request) -> web.Response:
        if "doc" not in doc_holder:
            doc_holder["doc"] = _encoder.encode(openapi_document(all_routes, version))
        return web.Response(body=doc_holder["doc"], content_type="application/json")

    all_routes = [
        *routes,
        Route("GET", "/v1/openapi.json", openapi, "This document.", response=dict[str, Any]),
    ]
    for route in all_routes:
        app.router.add_route(route.method, route.path, _wrap(route))
    return app


class ApiServer:
    """Listeners of one app: a unix socket (0660) and an optional TCP address."""

    def __init__(self, app: web.Application, socket_path: Path, tcp_address: str = "") -> None:
        self.app = app
        self.socket_path = socket_path
        self.tcp_address = tcp_address
        # One debug line per request; setup_logging keeps it quiet below debug.
        self.server = web.HttpServer(app, access_log=logging.getLogger("moorage.http.access"))

    async def start(self) -> None:
        """Serve the unix socket the daemon bound at start, or bind it now.

        A stale socket file from a dead daemon is replaced
        (:func:`runtime.core.listeners.bind_unix`).
        """
        sock = listeners.take(self.socket_path) or listeners.bind_unix(self.socket_path)
        await self.server.serve_socket(sock)
        if self.tcp_address:
            host, _, port = self.tcp_address.rpartition(":")
            await self.server.serve_tcp(host or "127.0.0.1", int(port))
        log.info(
            "API listening on unix://%s%s",
            self.socket_path,
            f" and tcp://{self.tcp_address}" if self.tcp_address else "",
        )

    @property
    def tcp_port(self) -> int | None:
        """The bound TCP port (useful when configured as port 0)."""
        for sock in self.server.sockets:
            if sock.family != socket.AF_UNIX:
                return int(sock.getsockname()[1])
        return None

    async def stop(self) -> None:
        """Close listeners and remove the socket file."""
        await self.server.shutdown(timeout=2.0)
        self.socket_path.unlink(missing_ok=True)
