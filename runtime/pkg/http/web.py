"""The names route modules use, as ``aiohttp.web`` spells them: ``from ... import web``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.pkg.http.app import AppKey, Application, Handler, Middleware, middleware
from runtime.pkg.http.errors import (
    HTTPBadRequest,
    HTTPException,
    HTTPMethodNotAllowed,
    HTTPNotFound,
    HTTPRequestEntityTooLarge,
    HTTPRequestHeaderFieldsTooLarge,
)
from runtime.pkg.http.request import Request
from runtime.pkg.http.response import Response, StreamResponse, json_response
from runtime.pkg.http.server import HttpServer

if TYPE_CHECKING:
    from runtime.pkg.http.websocket import WebSocketResponse, WSCloseCode, WSMessage, WSMsgType

__all__ = [
    "AppKey",
    "Application",
    "HTTPBadRequest",
    "HTTPException",
    "HTTPMethodNotAllowed",
    "HTTPNotFound",
    "HTTPRequestEntityTooLarge",
    "HTTPRequestHeaderFieldsTooLarge",
    "Handler",
    "HttpServer",
    "Middleware",
    "Request",
    "Response",
    "StreamResponse",
    "WSCloseCode",
    "WSMessage",
    "WSMsgType",
    "WebSocketResponse",
    "json_response",
    "middleware",
]

_WEBSOCKET = frozenset({"WSCloseCode", "WSMessage", "WSMsgType", "WebSocketResponse"})


def __getattr__(name: str) -> Any:
    """The websocket names, imported by the first websocket a handler opens, not at start."""
    if name not in _WEBSOCKET:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from runtime.pkg.http import websocket

    value = getattr(websocket, name)
    globals()[name] = value
    return value
