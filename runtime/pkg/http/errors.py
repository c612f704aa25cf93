"""HTTP errors a handler or the router raises; the server answers them with their status."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

__all__ = [
    "HTTPBadRequest",
    "HTTPException",
    "HTTPMethodNotAllowed",
    "HTTPNotFound",
    "HTTPRequestEntityTooLarge",
    "HTTPRequestHeaderFieldsTooLarge",
    "reason_of",
]


def reason_of(status: int) -> str:
    """The standard reason phrase of ``status`` (empty for an unknown one)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class HTTPException(Exception):
    """An answer with ``status``; the server renders it as ``"<status>: <reason>"``."""

    status = 500

    def __init__(self, reason: str | None = None, *, text: str | None = None) -> None:
        self.reason = reason or reason_of(self.status)
        self.text = text if text is not None else f"{self.status}: {self.reason}"
        super().__init__(self.text)


class HTTPBadRequest(HTTPException):
    """400: the request is malformed."""

    status = 400


class HTTPNotFound(HTTPException):
    """404: no route matches the path."""

    status = 404


class HTTPMethodNotAllowed(HTTPException):
    """405: routes match the path, none with the request's method."""

    status = 405

    def __init__(self, method: str, allowed_methods: Iterable[str]) -> None:
        self.method = method
        self.allowed_methods = set(allowed_methods)
        super().__init__()


class HTTPRequestEntityTooLarge(HTTPException):
    """413: the body exceeds what the application accepts."""

    status = 413

    def __init__(self, max_size: int, actual_size: int) -> None:
        super().__init__(text=f"Maximum request body size {max_size} exceeded, "
                              f"actual body size {actual_size}")


class HTTPRequestHeaderFieldsTooLarge(HTTPException):
    """431: the request line or the header fields exceed the limits."""

    status = 431
