"""How route sets declare endpoints, and the helpers handlers share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import typedefs, web

from runtime.core.errors import InvalidArgument

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
    "namespace_of",
]

T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[Any]]

#: Where the namespace middleware leaves the validated namespace.
NAMESPACE_KEY = "moorage.namespace"

#: Callables ending the streaming responses still open; the server calls them
#: when it starts to stop (see :func:`ends_at_shutdown`).
STREAM_ENDERS = web.AppKey[set[Callable[[], None]]]("moorage.stream_enders")


@dataclass(frozen=True)
class Query:
    """A documented query parameter."""

    name: str
    description: str
    repeated: bool = False
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One endpoint; the handler returns a msgspec-encodable value or a StreamResponse.

    Attributes:
        method: HTTP method.
        path: aiohttp path pattern (``/v1/namespaces/{name}``).
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
    tags: tuple[str, ...] = field(default=())


#: The service an ``api.*`` plugin returns: the routes it contributes.
RouteSet = list[Route]

#: An aiohttp middleware: ``async def mw(request, handler) -> response``.
Middleware = typedefs.Middleware


class RouteSetWithMiddlewares(list[Route]):
    """A route set that also wraps *every* request the server answers.

    The server puts these middlewares outermost, so they see each request's
    final status, errors included (``api.metrics`` counts and times requests).
    """

    def __init__(self, routes: Iterable[Route], middlewares: Iterable[Middleware]) -> None:
        super().__init__(routes)
        self.middlewares = tuple(middlewares)


def namespace_of(request: web.Request) -> str:
    """The validated namespace of the request (header ``Moorage-Namespace``)."""
    return str(request[NAMESPACE_KEY])


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

    aiohttp waits for running handlers (up to its shutdown timeout) and then
    cancels them, so a stream that never ends by itself, like the event stream,
    must be told to end; its client then sees a clean end instead of a cut.
    """
    enders = request.app[STREAM_ENDERS]
    enders.add(end)
    try:
        yield
    finally:
        enders.discard(end)
