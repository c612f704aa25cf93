"""The client side of ``/v1/tasks/{id}/attach``: typed messages over a :class:`WebSocket`."""

from __future__ import annotations

import json
from dataclasses import dataclass

from runtime.client.websocket import BINARY, CLOSE, TEXT, WebSocket
from runtime.core.errors import from_code

__all__ = ["Attachment", "Exited", "Output", "Started"]


@dataclass(frozen=True)
class Output:
    """Output of the process: ``stream`` is 2 (stdout) or 3 (stderr)."""

    stream: int
    data: bytes


@dataclass(frozen=True)
class Started:
    """The server is attached (and started the process, if asked); ``pid`` is its pid."""

    pid: int


@dataclass(frozen=True)
class Exited:
    """The process ended; ``exit_status`` is ``None`` when the connection just closed."""

    exit_status: int | None
    exited_at: str | None = None


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
                message = json.loads(payload)
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
        self.ws.send_text(json.dumps({"type": "close_stdin"}))

    def resize(self, width: int, height: int) -> None:
        """Resize the process's terminal."""
        self.ws.send_text(json.dumps({"type": "resize", "width": width, "height": height}))

    def close(self) -> None:
        """Detach (the process keeps running)."""
        self.ws.close()
