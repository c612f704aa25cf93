"""``Application``: the router, the middlewares, typed state (``AppKey``) and shutdown hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from runtime.pkg.http.router import Router

if TYPE_CHECKING:
    from runtime.pkg.http.request import Request
    from runtime.pkg.http.response import StreamResponse

__all__ = ["AppKey", "Application", "Handler", "Middleware", "middleware"]

T = TypeVar("T")

Handler = Callable[["Request"], Awaitable["StreamResponse"]]
#: ``async def mw(request, handler) -> response``; the first of the list is outermost.
Middleware = Callable[["Request", Handler], Awaitable["StreamResponse"]]

_M = TypeVar("_M")


def middleware(function: _M) -> _M:
    """Mark ``function`` as a middleware (aiohttp's decorator; nothing to do here)."""
    return function


class AppKey(Generic[T]):
    """A typed key of the application's state: ``app[key]`` has type ``T``."""

    __slots__ = ("name",)

    def __init__(self, name: str, t: type[T] | None = None) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<AppKey {self.name}>"


class Application:
    """What a server serves: routes, middlewares, state and shutdown callbacks.

    Attributes:
        router: The routes.
        middlewares: Wrappers of every handler, the first outermost.
        client_max_size: The largest body :meth:`Request.read` accepts.
        on_shutdown: ``async def callback(app)``, called when the server
            starts to stop, before it waits for the running handlers.
    """

    def __init__(self, *, middlewares: Iterable[Middleware] = (),
                 client_max_size: int = 1024 * 1024) -> None:
        self.router = Router()
        self.middlewares = tuple(middlewares)
        self.client_max_size = client_max_size
        self.on_shutdown: list[Callable[[Application], Awaitable[None]]] = []
        self._state: dict[AppKey[Any], Any] = {}

    def __getitem__(self, key: AppKey[T]) -> T:
        return cast(T, self._state[key])

    def __setitem__(self, key: AppKey[T], value: T) -> None:
        self._state[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` inside every middleware."""
        for mw in reversed(self.middlewares):
            handler = partial(cast(Callable[..., Awaitable["StreamResponse"]], mw),
                              handler=handler)
        return handler

    async def shutdown(self) -> None:
        """Run the ``on_shutdown`` callbacks."""
        for callback in self.on_shutdown:
            await callback(self)
