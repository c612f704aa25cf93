"""Registrations of the API: ``server.http`` and the ``api.*`` route sets it mounts."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.core.errors import InvalidArgument
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import Middleware, Route, RouteSet


def _required(ctx: InitContext[Any]) -> tuple[Any, ...]:
    """The services of the route set's required plugins, in the order it lists them."""
    return tuple(ctx.get(name) for name in ctx.registration.requires)


def _gc_scheduler(ctx: InitContext[Any]) -> Callable[[], Any]:
    # Looked up per request: gc.scheduler is optional and may start after the route set.
    return lambda: ctx.plugins.services.get("gc.scheduler")


def _task_service(ctx: InitContext[Any]) -> tuple[Any, ...]:
    from runtime.plugins.tasks.service import TaskService

    def snapshots() -> Any:
        return ctx.plugins.services.get("service.snapshots")

    return (TaskService(ctx.get("containers.store"), ctx.get_by_type("runtime"), snapshots),
            ctx.daemon.cgroup_parent)


@dataclass(frozen=True)
class _RouteSet:
    """One built-in ``api.<id>`` plugin: a route set over the services it requires.

    ``factory`` names the function building the routes (``module:function``, the module
    under ``runtime.plugins``); it is imported at init, so that loading this module at every
    daemon start imports no handlers.
    """

    id: str
    requires: tuple[str, ...]
    description: str
    factory: str
    args: Callable[[InitContext[Any]], tuple[Any, ...]] = _required

    def registration(self) -> Registration:
        """The plugin's registration; its init calls the factory with :attr:`args`."""

        async def init(ctx: InitContext[Any]) -> RouteSet:
            module, _, function = self.factory.partition(":")
            build = getattr(importlib.import_module(f"runtime.plugins.{module}"), function)
            routes: RouteSet = build(*self.args(ctx))
            return routes

        return Registration(
            type="api",
            id=self.id,
            init=init,
            requires=self.requires,
            description=self.description,
        )


_ROUTE_SETS = (
    _RouteSet(
        "system", (), "version, health, plugins, events", "api.system:system_routes",
        lambda ctx: (ctx,),
    ),
    _RouteSet("namespaces", ("metadata.sqlite",), "namespaces", "metadata.routes:namespace_routes"),
    _RouteSet(
        "content", ("content.local",), "content and ingests", "content.routes:content_routes",
    ),
    _RouteSet(
        "leases", ("metadata.sqlite",), "leases", "metadata.lease_routes:lease_routes",
        lambda ctx: (*_required(ctx), _gc_scheduler(ctx)),
    ),
    _RouteSet("snapshots", ("service.snapshots",), "snapshots", "snapshots.routes:snapshot_routes"),
    _RouteSet("gc", ("gc.scheduler",), "garbage collection", "gc.routes:gc_routes"),
    _RouteSet(
        "images", ("images.store",), "images: pull, push, import, export",
        "images.routes:image_routes",
        lambda ctx: (*_required(ctx), _gc_scheduler(ctx)),
    ),
    _RouteSet(
        "containers", ("containers.store",), "containers", "containers.routes:container_routes",
        lambda ctx: (*_required(ctx), lambda: ctx.plugins.by_type("runtime"),
                     ctx.daemon.cgroup_parent),
    ),
    _RouteSet(
        "tasks", ("containers.store", "runtime"), "tasks: lifecycle, exec, logs, attach, metrics",
        "tasks.routes:task_routes", _task_service,
    ),
)  # fmt: skip


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
    for route_set in _ROUTE_SETS:
        yield route_set.registration()
    yield Registration(
        type="server",
        id="http",
        init=init_server,
        close=close_server,
        requires=("api",),
        description="admin HTTP API on a unix socket and TCP",
    )
