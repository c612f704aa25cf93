"""Routes: aiohttp's path patterns (``{name}``, ``{name:regex}``) and its resolution rules.

A path is resolved as aiohttp 3.10+ does, so the API answers exactly as it
did: resources are indexed by their literal prefix (up to the last ``/``
before the first ``{``); the request's path is looked up whole, then with
its last segment dropped, and so on up to ``/``; under one key, resources are
tried in the order they were added. The first resource whose pattern matches
and that has a route for the method wins; a path some resource matches with
other methods only is a 405 (with the methods it allows), else a 404.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import msgspec

from runtime.pkg.http.errors import HTTPException, HTTPMethodNotAllowed, HTTPNotFound
from runtime.pkg.http.request import unquote_value

if TYPE_CHECKING:
    from runtime.pkg.http.request import Request
    from runtime.pkg.http.response import StreamResponse

__all__ = ["MatchInfo", "Resource", "Route", "Router"]

Handler = Callable[["Request"], Awaitable["StreamResponse"]]

# A {name} or {name:regex} part; the regex may hold one level of braces ({64}).
_PART = re.compile(r"(\{[_a-zA-Z][^{}]*(?:\{[^{}]*\}[^{}]*)*\})")
_PLAIN = re.compile(r"\{(?P<var>[_a-zA-Z][_a-zA-Z0-9]*)\}")
_WITH_RE = re.compile(r"\{(?P<var>[_a-zA-Z][_a-zA-Z0-9]*):(?P<re>.+)\}")
_SEGMENT = r"[^{}/]+"


class Resource:
    """One path pattern and its routes, one per method."""

    def __init__(self, path: str) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with /")
        self.path = path
        self.routes: dict[str, Route] = {}
        canonical = ""
        pattern = ""
        dynamic = False
        for part in _PART.split(path):
            if plain := _PLAIN.fullmatch(part):
                pattern += f"(?P<{plain['var']}>{_SEGMENT})"
                canonical += "{" + plain["var"] + "}"
                dynamic = True
            elif with_re := _WITH_RE.fullmatch(part):
                pattern += f"(?P<{with_re['var']}>{with_re['re']})"
                canonical += "{" + with_re["var"] + "}"
                dynamic = True
            else:
                if "{" in part or "}" in part:
                    raise ValueError(f"invalid path pattern {path!r}")
                pattern += re.escape(part)
                canonical += part
        #: The pattern with the regexes dropped (``/v1/content/{digest}``).
        self.canonical = canonical
        # Compiled by the first match: the daemon adds some 70 resources at
        # start, about 45 us of CPU each to compile (3 ms in all), before it
        # can answer any request; most routes see no request for a while.
        self._pattern = pattern if dynamic else None
        self._regex: re.Pattern[str] | None = None

    @property
    def index_key(self) -> str:
        """The literal prefix the router indexes this resource under."""
        key = self.canonical
        if "{" in key:
            key = key.partition("{")[0].rpartition("/")[0]
        return key.rstrip("/") or "/"

    def match(self, path: str) -> dict[str, str] | None:
        """The values of the pattern's parts if ``path`` (in safe form) matches it."""
        if self._pattern is None:
            return {} if path == self.path else None
        if self._regex is None:
            self._regex = re.compile(self._pattern)
        found = self._regex.fullmatch(path)
        if found is None:
            return None
        return {k: unquote_value(v) for k, v in found.groupdict().items()}

    def add_route(self, method: str, handler: Handler) -> Route:
        """Serve ``method`` on this resource with ``handler``."""
        method = method.upper()
        if method in self.routes:
            raise RuntimeError(f"{method} {self.path} is already routed")
        route = Route(method, handler, self)
        self.routes[method] = route
        return route


class Route(msgspec.Struct, frozen=True):
    """A method on a resource and its handler."""

    method: str
    handler: Handler
    resource: Resource | None


class MatchInfo(dict[str, str]):
    """The values taken from the path, with the matched route (``route.resource``).

    When nothing matched, ``route.resource`` is None and ``http_exception`` is
    the 404 or 405 that the route's handler raises.
    """

    def __init__(self, route: Route, values: dict[str, str] | None = None,
                 http_exception: HTTPException | None = None) -> None:
        super().__init__(values or {})
        self.route = route
        self.http_exception = http_exception


class Router:
    """The application's resources in the order they were added."""

    def __init__(self) -> None:
        self._resources: list[Resource] = []
        self._index: dict[str, list[Resource]] = {}

    def add_resource(self, path: str) -> Resource:
        """The resource for ``path``: the last one added if it has the same path."""
        if self._resources and self._resources[-1].path == path:
            return self._resources[-1]
        resource = Resource(path)
        self._resources.append(resource)
        self._index.setdefault(resource.index_key, []).append(resource)
        return resource

    def add_route(self, method: str, path: str, handler: Handler) -> Route:
        """Serve ``method path`` with ``handler``."""
        return self.add_resource(path).add_route(method, handler)

    def add_get(self, path: str, handler: Handler) -> Route:
        """Serve ``GET path`` with ``handler``."""
        return self.add_route("GET", path, handler)

    def routes(self) -> Iterator[Route]:
        """Every route, by resource in order."""
        for resource in self._resources:
            yield from resource.routes.values()

    def resources(self) -> list[Resource]:
        """Every resource in order."""
        return list(self._resources)

    def resolve(self, method: str, path: str) -> MatchInfo:
        """The route serving ``method`` at ``path`` (safe form), or an error to raise."""
        allowed: set[str] = set()
        part = path
        while part:
            for resource in self._index.get(part, ()):
                values = resource.match(path)
                if values is None:
                    continue
                route = resource.routes.get(method)
                if route is not None:
                    return MatchInfo(route, values)
                allowed.update(resource.routes)
            if part == "/":
                break
            part = part.rpartition("/")[0] or "/"
        error: HTTPException = (HTTPMethodNotAllowed(method, allowed) if allowed
                                else HTTPNotFound())
        return MatchInfo(Route(method, _raiser(error), None), None, error)


def _raiser(error: HTTPException) -> Handler:
    async def handler(request: Request) -> StreamResponse:
        raise error

    return handler
