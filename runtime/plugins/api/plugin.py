"""Registrations of the API: ``server.http`` and the ``api.*`` route sets it mounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.core.errors import InvalidArgument
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.routes import Middleware, Route, RouteSet


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

    # Looked up per request: gc.scheduler is optional and may start after this route set.
    return lease_routes(
        ctx.get("metadata.sqlite"), lambda: ctx.plugins.services.get("gc.scheduler")
    )


async def init_gc(ctx: InitContext[Any]) -> RouteSet:
    """Garbage collection over ``gc.scheduler``."""
    from runtime.plugins.api.gc import gc_routes

    return gc_routes(ctx.get("gc.scheduler"))


async def init_snapshots(ctx: InitContext[Any]) -> RouteSet:
    """Snapshots over ``service.snapshots``."""
    from runtime.plugins.api.snapshots import snapshot_routes

    return snapshot_routes(ctx.get("service.snapshots"))


async def init_containers(ctx: InitContext[Any]) -> RouteSet:
    """Containers over ``containers.store``."""
    from runtime.plugins.api.containers import container_routes

    return container_routes(ctx.get("containers.store"), lambda: ctx.plugins.by_type("runtime"))


async def init_tasks(ctx: InitContext[Any]) -> RouteSet:
    """Tasks over the running ``runtime.*`` plugins."""
    from runtime.plugins.api.tasks import task_routes
    from runtime.plugins.runtime.tasks import TaskService

    def snapshots() -> Any:
        return ctx.plugins.services.get("service.snapshots")

    service = TaskService(ctx.get("containers.store"), ctx.get_by_type("runtime"), snapshots)
    return task_routes(service)


async def init_images(ctx: InitContext[Any]) -> RouteSet:
    """Images over ``images.store``."""
    from runtime.plugins.api.images import image_routes

    # Looked up per request, as for leases: gc.scheduler is optional.
    return image_routes(
        ctx.get("images.store"), lambda: ctx.plugins.services.get("gc.scheduler")
    )


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
    middlewares: list[Middleware] = []
    for route_set in ctx.get_by_type("api").values():
        routes.extend(route_set)
        middlewares.extend(getattr(route_set, "middlewares", ()))
    server = ApiServer(
        build_app(routes, version=runtime.__version__, token=token, middlewares=middlewares),
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
        type="api",
        id="gc",
        init=init_gc,
        requires=("gc.scheduler",),
        description="garbage collection",
    )
    yield Registration(
        type="api",
        id="images",
        init=init_images,
        requires=("images.store",),
        description="images: pull, push, import, export",
    )
    yield Registration(
        type="api",
        id="containers",
        init=init_containers,
        requires=("containers.store",),
        description="containers",
    )
    yield Registration(
        type="api",
        id="tasks",
        init=init_tasks,
        requires=("containers.store", "runtime"),
        description="tasks: lifecycle, exec, logs, attach, metrics",
    )
    yield Registration(
        type="server",
        id="http",
        init=init_server,
        close=close_server,
        requires=("api",),
        description="admin HTTP API on a unix socket and TCP",
    )
