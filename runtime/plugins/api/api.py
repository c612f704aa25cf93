"""The contract of the admin API for plugins: how route sets declare endpoints and register.

A plugin serving HTTP routes keeps them in its own ``routes.py`` and registers an
``api.<id>`` plugin with :func:`route_set`; ``server.http`` mounts every running
route set. Handlers share :func:`namespace_of`, :func:`decode_body`,
:func:`ends_at_shutdown` and :func:`error_response`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec

from runtime.api.types import ErrorBody, ErrorDetail
from runtime.core.errors import InvalidArgument
from runtime.core.registration import InitContext, Registration
from runtime.pkg.http import web

__all__ = [
    "NAMESPACE_KEY",
    "STREAM_ENDERS",
    "Middleware",
    "Query",
    "Route",
    "RouteSet",
    "RouteSetWithMiddlewares",
    "decode_body",
    "ends_at_shutdown",
    "error_response",
    "list_route",
    "namespace_of",
    "optional_service",
    "required_services",
    "route_set",
]

T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[Any]]

#: Where the namespace middleware leaves the validated namespace.
NAMESPACE_KEY = "moorage.namespace"

#: Callables ending the streaming responses still open; the server calls them
#: when it starts to stop (see :func:`ends_at_shutdown`).
STREAM_ENDERS = web.AppKey[set[Callable[[], None]]]("moorage.stream_enders")


class Query(msgspec.Struct, frozen=True):
    """A documented query parameter."""

    name: str
    description: str
    repeated: bool = False
    required: bool = False


class Route(msgspec.Struct, frozen=True):
    """One endpoint; the handler returns a msgspec-encodable value or a StreamResponse.

    Attributes:
        method: HTTP method.
        path: Path pattern (``/v1/namespaces/{name}``, aiohttp's syntax).
        handler: ``async def handler(request) -> value``; ``None`` answers 204.
        summary: One line for the OpenAPI document.
        body: The request body type, for decoding and documentation.
        response: The response body type (``None``: no body).
        status: Status of a successful answer carrying a body.
        query: Documented query parameters.
        stream: Media type of a streamed response (``application/x-ndjson``...).
    """

    method: str
    path: str
    handler: Handler
    summary: str
    body: Any = None
    response: Any = None
    status: int = 200
    query: tuple[Query, ...] = ()
    stream: str = ""
    tags: tuple[str, ...] = ()


#: The service an ``api.*`` plugin returns: the routes it contributes.
RouteSet = list[Route]

#: A middleware: ``async def mw(request, handler) -> response``.
Middleware = web.Middleware


class RouteSetWithMiddlewares(list[Route]):
    """A route set that also wraps *every* request the server answers.

    The server puts these middlewares outermost, so they see each request's
    final status, errors included (``api.metrics`` counts and times requests).
    This class is the contract: the server asks once, when it mounts the route
    sets, which of them are one.
    """

    def __init__(self, routes: Iterable[Route], middlewares: Iterable[Middleware]) -> None:
        super().__init__(routes)
        self.middlewares = tuple(middlewares)


_encoder = msgspec.json.Encoder()


def error_response(status: int, code: str, message: str) -> web.Response:
    """The one error shape, for every failure the API reports."""
    body = _encoder.encode(ErrorBody(error=ErrorDetail(code=code, message=message)))
    return web.Response(status=status, body=body, content_type="application/json")


def namespace_of(request: web.Request) -> str:
    """The validated namespace of the request (header ``Moorage-Namespace``)."""
    return str(request[NAMESPACE_KEY])


def list_route(path: str, handler: Handler, summary: str, response: Any,
               filters: str = "filter; repeat to OR", tags: tuple[str, ...] = ()) -> Route:
    """``GET path``: records of the namespace, narrowed by repeated ``filter`` parameters.

    Args:
        path: The collection's path (``/v1/images``).
        handler: Answers the list, narrowed by ``request.query.getall("filter")``.
        summary: One line for the OpenAPI document.
        response: The answer's type (``list[ImageInfo]``).
        filters: How the ``filter`` parameter is documented (the fields it matches).
        tags: OpenAPI tags.
    """
    return Route("GET", path, handler, summary, response=response,
                 query=(Query("filter", filters, repeated=True),), tags=tags)


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """Decode the JSON body into ``type_``; InvalidArgument names the bad field."""
    raw = await request.read()
    try:
        return msgspec.json.decode(raw or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc


@contextmanager
def ends_at_shutdown(request: web.Request, end: Callable[[], None]) -> Iterator[None]:
    """Have the server call ``end`` if it stops while this streaming handler runs.

    The server waits for running handlers (up to its shutdown timeout) and then
    cancels them, so a stream that never ends by itself, like the event stream,
    must be told to end; its client then sees a clean end instead of a cut.
    """
    enders = request.app[STREAM_ENDERS]
    enders.add(end)
    try:
        yield
    finally:
        enders.discard(end)


def required_services(ctx: InitContext[Any]) -> tuple[Any, ...]:
    """The services of the route set's required plugins, in the order it lists them."""
    return tuple(ctx.get(name) for name in ctx.registration.requires)


def optional_service(ctx: InitContext[Any], name: str) -> Callable[[], Any]:
    """A lookup of an optional plugin's service, made per request: it may start later."""
    return lambda: ctx.plugins.services.get(name)


def route_set(
    id: str,
    requires: tuple[str, ...],
    description: str,
    factory: str,
    args: Callable[[InitContext[Any]], tuple[Any, ...]] = required_services,
) -> Registration:
    """The registration of one ``api.<id>`` plugin: a route set over the services it requires.

    Args:
        id: The route set's id (``api.<id>``).
        requires: The plugins whose services the routes use.
        description: One line for ``plugins ls``.
        factory: ``module:function`` building the :data:`RouteSet`; the module is
            imported at init, so that registering imports no handlers.
        args: The factory's arguments, from the init context (by default the
            required plugins' services, in order).
    """

    async def init(ctx: InitContext[Any]) -> RouteSet:
        module, _, function = factory.partition(":")
        build = getattr(importlib.import_module(module), function)
        routes: RouteSet = build(*args(ctx))
        return routes

    return Registration(type="api", id=id, init=init, requires=requires, description=description)
