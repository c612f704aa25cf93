"""Registrations of the API: ``server.http`` and the ``api.*`` route sets it mounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.core.errors import InvalidArgument
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.routes import Route, RouteSet


async def init_system(ctx: InitContext[Any]) -> RouteSet:
    """Version, health, plugins and events."""
    from runtime.plugins.api.system import system_routes

    return system_routes(ctx)


async def init_namespaces(ctx: InitContext[Any]) -> RouteSet:
    """Namespaces over ``metadata.sqlite``."""
    from runtime.plugins.api.namespaces import namespace_routes

    return namespace_routes(ctx.get("metadata.sqlite"))


async def init_content(ctx: InitContext[Any]) -> RouteSet:
    """Content over ``content.local``."""
    from runtime.plugins.api.content import content_routes

    return content_routes(ctx.get("content.local"))


async def init_leases(ctx: InitContext[Any]) -> RouteSet:
    """Leases over ``metadata.sqlite``."""
    from runtime.plugins.api.leases import lease_routes

    return lease_routes(ctx.get("metadata.sqlite"))


async def init_snapshots(ctx: InitContext[Any]) -> RouteSet:
    """Snapshots over ``service.snapshots``."""
    from runtime.plugins.api.snapshots import snapshot_routes

    return snapshot_routes(ctx.get("service.snapshots"))


async def init_server(ctx: InitContext[Any]) -> Any:
    """Mount every running route set and start the listeners."""
    import runtime
    from runtime.plugins.api.server import ApiServer, build_app

    api = ctx.daemon.api
    token = ""
    if api.tcp_address:
        if not api.token_file:
            raise InvalidArgument("[api] tcp_address needs token_file: TCP is never open")
        try:
            token = Path(api.token_file).read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"[api] token_file {api.token_file}: {exc.strerror}") from exc
        if len(token) < 16:
            raise InvalidArgument(f"[api] token_file {api.token_file}: token shorter than 16")
    routes: list[Route] = []
    for route_set in ctx.get_by_type("api").values():
        routes.extend(route_set)
    server = ApiServer(
        build_app(routes, version=runtime.__version__, token=token),
        Path(api.address),
        api.tcp_address,
    )
    await server.start()
    return server


async def close_server(server: Any) -> None:
    """Stop listening and remove the socket."""
    await server.stop()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The admin API listener and its built-in route sets."""
    yield Registration(
        type="api", id="system", init=init_system, description="version, health, plugins, events"
    )
    yield Registration(
        type="api",
        id="namespaces",
        init=init_namespaces,
        requires=("metadata.sqlite",),
        description="namespaces",
    )
    yield Registration(
        type="api",
        id="content",
        init=init_content,
        requires=("content.local",),
        description="content and ingests",
    )
    yield Registration(
        type="api",
        id="leases",
        init=init_leases,
        requires=("metadata.sqlite",),
        description="leases",
    )
    yield Registration(
        type="api",
        id="snapshots",
        init=init_snapshots,
        requires=("service.snapshots",),
        description="snapshots",
    )
    yield Registration(
        type="server",
        id="http",
        init=init_server,
        close=close_server,
        requires=("api",),
        description="admin HTTP API on a unix socket and TCP",
    )
