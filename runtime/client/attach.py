"""The client side of ``/v1/tasks/{id}/attach``: typed messages over a :class:`WebSocket`."""

from __future__ import annotations

from runtime.client.plainjson import dumps, loads
from runtime.client.transport import unreachable
from runtime.client.websocket import BINARY, CLOSE, TEXT, HandshakeError, WebSocket
from runtime.core.errors import from_code

__all__ = ["Attachment", "Exited", "Output", "Started", "open_attachment"]

# typing.TYPE_CHECKING without importing typing (`moorage run` goes without it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Message:
    """Value semantics for the message classes below.

    Plain classes rather than frozen dataclasses or NamedTuples: ``dataclasses``
    (with ``inspect``) or ``typing`` would be the largest imports of ``moorage run``.
    """

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Output(_Message):
    """Output of the process: ``stream`` is 2 (stdout) or 3 (stderr)."""

    __slots__ = ("stream", "data")  # noqa: RUF023 - the constructor's order

    def __init__(self, stream: int, data: bytes) -> None:
        self.stream = stream
        self.data = data


class Started(_Message):
    """The server is attached (and started the process, if asked); ``pid`` is its pid."""

    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        self.pid = pid


class Exited(_Message):
    """The process ended; ``exit_status`` is ``None`` when the connection just closed."""

    __slots__ = ("exit_status", "exited_at")

    def __init__(self, exit_status: int | None, exited_at: str | None = None) -> None:
        self.exit_status = exit_status
        self.exited_at = exited_at


Message = Output | Started | Exited


class Attachment:
    """An attach session. Iterate :meth:`events` or drive it with ``select`` on :meth:`fileno`.

    Raises (from the event methods):
        MoorageError: The server reported an error (e.g. the start failed).
    """

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def fileno(self) -> int:
        """The socket, for ``select``."""
        return self.ws.fileno()

    def _convert(self, raw: list[tuple[int, bytes]]) -> list[Message]:
        out: list[Message] = []
        for opcode, payload in raw:
            if opcode == BINARY and payload:
                out.append(Output(payload[0], payload[1:]))
            elif opcode == TEXT:
                message = loads(payload)
                kind = message.get("type")
                if kind == "error":
                    raise from_code(message.get("code", "internal"), message.get("message", ""))
                if kind == "attached":
                    out.append(Started(int(message.get("pid", 0))))
                elif kind == "exit":
                    out.append(Exited(message.get("exit_status"), message.get("exited_at")))
            elif opcode == CLOSE:
                out.append(Exited(None))
        return out

    def buffered(self) -> list[Message]:
        """Messages that already arrived, without reading the socket."""
        return self._convert(self.ws.buffered())

    def read_available(self) -> list[Message]:
        """Read once (the socket is readable) and return the messages completed."""
        return self._convert(self.ws.read_available())

    def receive(self) -> Message:
        """Block for the next message."""
        while True:
            converted = self._convert([self.ws.receive()])
            if converted:
                return converted[0]

    def send_stdin(self, data: bytes) -> None:
        """Write to the process's stdin."""
        self.ws.send_binary(data)

    def close_stdin(self) -> None:
        """Close the process's stdin (end-of-file)."""
        self.ws.send_text(dumps({"type": "close_stdin"}))

    def resize(self, width: int, height: int) -> None:
        """Resize the process's terminal."""
        self.ws.send_text(dumps({"type": "resize", "width": width, "height": height}))

    def close(self) -> None:
        """Detach (the process keeps running)."""
        self.ws.close()


def open_attachment(client: Any, target: str) -> Attachment:
    """Open the attach websocket ``target`` (path and query) with either API client.

    ``client`` offers ``address``, ``timeout``, ``_headers()`` and
    ``_error(status, body)``, as :class:`runtime.client.Client` and
    :class:`runtime.client.lean.LeanClient` do; an HTTP answer instead of the
    upgrade is rebuilt as the server's error.
    """
    try:
        ws = WebSocket.connect(client.address, target, client._headers(), timeout=client.timeout)
    except HandshakeError as exc:
        raise client._error(exc.status, exc.body) from None
    except OSError as exc:
        raise unreachable(client.address, exc) from exc
    return Attachment(ws)
