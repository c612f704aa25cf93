"""Registrations of the API: ``server.http``, mounting every ``api.*`` route set; ``api.system``.

The other route sets are registered by the plugins whose services they serve
(with :func:`~runtime.plugins.api.api.route_set`), next to their ``routes.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.core.errors import InvalidArgument
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import Middleware, Route, RouteSet, RouteSetWithMiddlewares, route_set

if TYPE_CHECKING:
    from runtime.plugins.api.server import ApiServer


async def init_server(ctx: InitContext[Any]) -> ApiServer:
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
    route_sets: dict[str, RouteSet] = ctx.get_by_type("api")
    for served in route_sets.values():
        routes.extend(served)
        if isinstance(served, RouteSetWithMiddlewares):
            middlewares.extend(served.middlewares)
    server = ApiServer(
        build_app(routes, version=runtime.__version__, token=token, middlewares=middlewares),
        Path(api.address),
        api.tcp_address,
    )
    await server.start()
    return server


async def close_server(server: ApiServer) -> None:
    """Stop listening and remove the socket."""
    await server.stop()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The admin API listener and its built-in route sets."""
    yield route_set(
        "system", (), "version, health, plugins, events",
        "runtime.plugins.api.system:system_routes", lambda ctx: (ctx,),
    )
    yield Registration(
        type="server",
        id="http",
        init=init_server,
        close=close_server,
        requires=("api",),
        description="admin HTTP API on a unix socket and TCP",
    )
