"""A minimal HTTP/1.1 client over a unix socket or TCP, on the ``socket`` module alone.

``http.client`` pulls in the ``email`` package (about 40 ms on this class of
machine); the CLI's round trip budget cannot afford it, and the admin API only
needs one request per connection with Content-Length or chunked answers.
"""

from __future__ import annotations

# ``_socket`` rather than ``socket`` for unix sockets: the wrapper module pulls in
# ``enum`` and ``selectors`` (several ms of every CLI call) for nothing used here.
import _socket

from runtime.core.errors import InvalidArgument, Unavailable

# typing.TYPE_CHECKING without importing typing (nor collections.abc) at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = ["Response", "read_head", "request", "unreachable"]

_CHUNK = 256 * 1024


class Response:
    """A response whose body is read lazily from the socket."""

    def __init__(self, sock: _socket.socket, status: int, headers: dict[str, str], rest: bytes):
        self.sock = sock
        self.status = status
        self.headers = headers
        self._buf = rest
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._remaining = int(length) if length is not None else None
        self._done = status in (204, 304) or self._remaining == 0

    def _fill(self) -> bool:
        data = self.sock.recv(_CHUNK)
        self._buf += data
        return bool(data)

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError("connection closed inside a chunk header")
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def iter_raw(self) -> Iterator[bytes]:
        """Yield body bytes as they arrive (de-chunked)."""
        if self._done:
            return
        if self._chunked:
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    self._read_line()
                    break
                while len(self._buf) < size + 2:
                    if not self._fill():
                        raise ConnectionError("connection closed inside a chunk")
                yield self._buf[:size]
                self._buf = self._buf[size + 2 :]
        elif self._remaining is not None:
            while self._remaining > 0:
                if not self._buf and not self._fill():
                    raise ConnectionError("connection closed before the body ended")
                piece, self._buf = self._buf[: self._remaining], self._buf[self._remaining :]
                self._remaining -= len(piece)
                yield piece
        else:
            while True:
                if self._buf:
                    yield self._buf
                    self._buf = b""
                if not self._fill():
                    break
        self._done = True

    def read(self) -> bytes:
        """The whole body; closes the connection."""
        try:
            return b"".join(self.iter_raw())
        finally:
            self.close()

    def iter_lines(self) -> Iterator[bytes]:
        """Body lines as they arrive (for NDJSON streams)."""
        pending = b""
        for piece in self.iter_raw():
            pending += piece
            *lines, pending = pending.split(b"\n")
            yield from lines
        if pending:
            yield pending

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


def _unix(path: str, timeout: float | None) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _connect(address: str, timeout: float | None) -> tuple[_socket.socket, str]:
    if address.startswith("/"):
        return _unix(address, timeout), "localhost"
    if address.startswith("unix://"):
        # The common case, without urllib.parse (a few ms of every CLI call).
        return _unix(address[len("unix://"):], timeout), "localhost"
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme == "unix":
        return _unix(parts.path, timeout), "localhost"
    if parts.scheme == "http" and parts.hostname:
        import socket

        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        return sock, parts.netloc
    raise InvalidArgument(f"address {address!r}: use unix:///path or http://host:port")


def request(
    address: str,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str],
    body: bytes | Iterable[bytes] | None = None,
    timeout: float | None = 60.0,
) -> Response:
    """Send one request (``Connection: close``) and parse the status line and headers.

    ``body`` may be an iterable of byte strings: it is then sent with chunked
    transfer encoding as it is produced (uploads of unknown length from a pipe).
    """
    sock, host = _connect(address, timeout)
    try:
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body or b"")
            head.append(f"Content-Length: {len(data)}")
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        else:
            head.append("Transfer-Encoding: chunked")
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            for piece in body:
                if piece:
                    sock.sendall(b"%x\r\n" % len(piece))
                    sock.sendall(piece)
                    sock.sendall(b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        status, parsed, rest = read_head(sock, "before the response headers")
        return Response(sock, status, parsed, rest)
    except BaseException:
        sock.close()
        raise


def read_head(sock: _socket.socket, where: str,
              size: int = _CHUNK) -> tuple[int, dict[str, str], bytes]:
    """An answer's status, its headers (names lower-cased) and the bytes received after them.

    Raises:
        ConnectionError: The peer closed the connection first (``where`` says when).
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(size)
        if not data:
            raise ConnectionError(f"connection closed {where}")
        buf += data
    raw_head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, rest


def unreachable(address: str, exc: OSError) -> Unavailable:
    """The error both clients raise when :func:`request` cannot reach the daemon at ``address``."""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return Unavailable(f"cannot reach the moorage daemon at {address}: {exc.strerror}; "
                           "is it running? (moorage daemon)")
    if isinstance(exc, PermissionError):
        return Unavailable(f"cannot open {address}: permission denied")
    return Unavailable(f"cannot reach the moorage daemon at {address}: {exc}")
