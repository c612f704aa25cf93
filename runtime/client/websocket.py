"""A minimal synchronous websocket client (RFC 6455), enough for ``/v1/tasks/{id}/attach``.

Like :mod:`runtime.client.transport` it uses the ``socket`` module alone. The
socket is exposed through :meth:`WebSocket.fileno` so that a caller can
``select`` on it together with a terminal; :meth:`WebSocket.read_available`
then consumes what arrived without blocking on a partial frame.
"""

from __future__ import annotations

import _socket
import os
import struct
from binascii import b2a_base64

from runtime.client.transport import _connect, read_head

# typing.TYPE_CHECKING without importing typing (nor collections, for Mapping).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["BINARY", "CLOSE", "TEXT", "HandshakeError", "WebSocket"]

try:
    # The built-in SHA-1: hashlib would load OpenSSL's libcrypto for one digest
    # of the handshake, a few ms of every `moorage run`.
    from _sha1 import sha1  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - an interpreter built without it
    from hashlib import sha1

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_RECV = 65536


class HandshakeError(Exception):
    """The server answered the upgrade with an HTTP error; carries status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _base64(data: bytes) -> str:
    return b2a_base64(data, newline=False).decode("ascii")


def _mask(data: bytes, key: bytes) -> bytes:
    # XOR as one big integer: far faster than a per-byte loop in Python.
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


class WebSocket:
    """One client websocket; frames are sent masked, as a client must."""

    def __init__(self, sock: _socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = buffered
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self._pending: list[tuple[int, bytes]] = []
        self.closed = False

    @classmethod
    def connect(cls, address: str, target: str, headers: Mapping[str, str],
                timeout: float | None = 60.0) -> WebSocket:
        """Open ``target`` on ``address`` and complete the upgrade handshake.

        Raises:
            HandshakeError: The server answered with an HTTP status instead.
            OSError: The daemon cannot be reached.
        """
        sock, host = _connect(address, timeout)
        try:
            key = _base64(os.urandom(16))
            head = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                    "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                    "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers.items())]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            status, fields, rest = read_head(sock, "during the websocket handshake", _RECV)
            if status != 101:
                length = int(fields.get("content-length", "0") or 0)
                while len(rest) < length:
                    data = sock.recv(_RECV)
                    if not data:
                        break
                    rest += data
                raise HandshakeError(status, rest[:length] if length else rest)
            accept = _base64(sha1((key + _GUID).encode()).digest())
            if fields.get("sec-websocket-accept") != accept:
                raise ConnectionError("websocket handshake: wrong Sec-WebSocket-Accept")
            sock.settimeout(None)
            return cls(sock, rest)
        except BaseException:
            sock.close()
            raise

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``."""
        return self.sock.fileno()

    # -- sending ------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        self.sock.sendall(head + key + _mask(payload, key))

    def send_binary(self, data: bytes) -> None:
        """Send one binary message."""
        self._send(BINARY, data)

    def send_text(self, text: str) -> None:
        """Send one text message."""
        self._send(TEXT, text.encode())

    def close(self) -> None:
        """Send a close frame (if still open) and close the socket."""
        if not self.closed:
            self.closed = True
            try:  # noqa: SIM105 - contextlib is an import `moorage run` does without
                self._send(CLOSE, struct.pack("!H", 1000))
            except OSError:
                pass  # the peer is gone: nothing to say goodbye to
        self.sock.close()

    # -- receiving ----------------------------------------------------------------

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """Take one complete frame from the buffer: ``(fin, opcode, payload)``."""
        buf = self._buf
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, n = bool(buf[1] & 0x80), buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = struct.unpack("!Q", buf[2:10])[0], 10
        key = b""
        if masked:
            key, pos = buf[pos : pos + 4], pos + 4
        if len(buf) < pos + n:
            return None
        payload = buf[pos : pos + n]
        self._buf = buf[pos + n :]
        return fin, opcode, _mask(payload, key) if masked else payload

    def _messages(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while (frame := self._frame()) is not None:
            fin, opcode, payload = frame
            if opcode == PING:
                self._send(PONG, payload)
            elif opcode == PONG:
                continue
            elif opcode == CLOSE:
                out.append((CLOSE, payload))
            elif opcode == CONTINUATION or not fin:
                if opcode != CONTINUATION:
                    self._fragment_op = opcode
                self._fragments.append(payload)
                if fin:
                    out.append((self._fragment_op, b"".join(self._fragments)))
                    self._fragments = []
            else:
                out.append((opcode, payload))
        return out

    def buffered(self) -> list[tuple[int, bytes]]:
        """Messages already received (with the handshake, say), without reading the socket."""
        out, self._pending = self._pending, []
        return [*out, *self._messages()]

    def read_available(self) -> list[tuple[int, bytes]]:
        """Read once from the socket; return every complete message not yet returned.

        Call it when ``select`` says the socket is readable. The list ends with
        ``(CLOSE, b"")`` when the connection ended.
        """
        out, self._pending = self._pending, []
        data = self.sock.recv(_RECV)
        if not data:
            return [*out, (CLOSE, b"")]
        self._buf += data
        return [*out, *self._messages()]

    def receive(self) -> tuple[int, bytes]:
        """Block until one message arrives (``(CLOSE, ...)`` at the end)."""
        while not self._pending:
            self._pending = self.read_available()
        return self._pending.pop(0)
