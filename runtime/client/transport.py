"""HTTP over a unix socket or TCP with the standard library only."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

from runtime.core.errors import InvalidArgument

__all__ = ["UnixHTTPConnection", "connect"]


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose socket is a unix stream socket."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connect to the socket file."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def connect(address: str, timeout: float | None) -> http.client.HTTPConnection:
    """A connection for ``unix:///path``, a bare path, or ``http://host:port``."""
    if address.startswith("/"):
        return UnixHTTPConnection(address, timeout)
    parts = urlsplit(address)
    if parts.scheme == "unix":
        return UnixHTTPConnection(parts.path, timeout)
    if parts.scheme == "http" and parts.hostname:
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    raise InvalidArgument(f"address {address!r}: use unix:///path or http://host:port")
