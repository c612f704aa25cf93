"""Route set ``api.system``: version, health, plugin introspection and the event stream."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from runtime.api.constants import API_VERSION
from runtime.api.types import (
    ErrorBody,
    ErrorDetail,
    EventEnvelope,
    Health,
    PluginInfo,
    Version,
)
from runtime.core.errors import MoorageError, Unavailable
from runtime.core.registration import InitContext
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, RouteSet, ends_at_shutdown, namespace_of

__all__ = ["system_routes"]

_encoder = msgspec.json.Encoder()


def system_routes(ctx: InitContext[Any]) -> RouteSet:
    """Routes that need only the core: the plugin set and the event exchange."""
    import runtime

    version = Version(version=runtime.__version__, api_version=API_VERSION, pid=os.getpid())

    async def get_version(_: web.Request) -> Version:
        return version

    async def healthz(_: web.Request) -> Health:
        return Health()

    async def plugins(_: web.Request) -> list[PluginInfo]:
        return [msgspec.convert(msgspec.to_builtins(r), PluginInfo) for r in ctx.plugins.list()]

    async def events(request: web.Request) -> web.StreamResponse:
        exchange = ctx.events
        if exchange is None:
            raise Unavailable("the event exchange is not running")
        namespace = namespace_of(request)
        filters = request.query.getall("filter", [])
        # Subscribing parses the filters, so a bad one is a 400 before streaming starts.
        # Namespaces isolate clients: nobody observes another's events, and held-back
        # events of one namespace are not released by a client of another.
        async with exchange.subscribe(*filters, namespace=namespace) as subscription:
            # Ended by the server when it stops, so the client sees a clean end.
            with ends_at_shutdown(request, subscription.end):
                response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                await response.prepare(request)
                try:
                    async for env in subscription:
                        line = EventEnvelope(
                            timestamp=env.timestamp,
                            namespace=env.namespace,
                            topic=env.topic,
                            type=env.type,
                            event=env.event,
                        )
                        await response.write(_encoder.encode(line) + b"\n")
                except MoorageError as exc:
                    err = ErrorBody(error=ErrorDetail(code=exc.code, message=exc.message))
                    await response.write(_encoder.encode(err) + b"\n")
                return response

    return [
        Route("GET", "/v1/version", get_version, "Daemon version.", response=Version),
        Route(
            "GET", "/v1/healthz", healthz, "Liveness: 200 while the API serves.", response=Health
        ),
        Route(
            "GET",
            "/v1/plugins",
            plugins,
            "Every plugin with its status and origin.",
            response=list[PluginInfo],
        ),
        Route(
            "GET",
            "/v1/events",
            events,
            "Stream events of the request's namespace as NDJSON (EventEnvelope per line).",
            query=(Query("filter", "containerd filter; repeat to OR", repeated=True),),
            stream="application/x-ndjson",
        ),
    ]
