"""The names route modules use, as ``aiohttp.web`` spells them: ``from ... import web``."""

from __future__ import annotations

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
