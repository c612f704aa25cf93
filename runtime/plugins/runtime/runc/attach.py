"""A connection to a conmon attach socket: the process's output in, its stdin out.

The socket is ``SOCK_SEQPACKET``. Each message from conmon is one read of the
process's output prefixed by one byte naming the stream
(:data:`~runtime.plugins.runtime.api.STDOUT` or ``STDERR``); each message to
conmon is written to the process's stdin (or its terminal). When the client
shuts down its sending side, conmon closes the process's stdin.

Socket paths under a deep state directory can exceed the 108 bytes a unix
address holds, so the socket is reached through ``/proc/self/fd/<dir>/attach``,
the same trick conmon uses to bind it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import anyio

from runtime.core.closing import AsyncClosing
from runtime.core.errors import FailedPrecondition

__all__ = ["AttachConnection", "connect_attach"]

_RECV = 65536
# conmon reads at most 32767 bytes per message; stay well below.
_SEND = 16384


class AttachConnection(AsyncClosing):
    """An open attach connection; use as ``async with``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._stdin_open = True

    async def receive(self) -> tuple[int, bytes] | None:
        """The next ``(stream, data)`` of output, or ``None`` once the monitor hung up."""
        while True:
            try:
                data = self._sock.recv(_RECV)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except (ConnectionResetError, OSError):
                return None
            if not data:
                return None
            return data[0], data[1:]

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin."""
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view[:_SEND])
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
                continue
            except OSError as exc:
                raise FailedPrecondition(f"cannot write to the process's stdin: {exc}") from exc
            view = view[sent:]

    def close_stdin(self) -> None:
        """Close the process's stdin: it reads end-of-file."""
        if self._stdin_open:
            self._stdin_open = False
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Drop the connection."""
        self._sock.close()

    async def aclose(self) -> None:
        """:meth:`close`, as ``async with`` calls it on the way out."""
        self.close()


def connect_attach(directory: Path) -> AttachConnection:
    """Connect to ``<directory>/attach`` (a conmon bundle or exec directory).

    Raises:
        FailedPrecondition: No monitor listens there (the process has exited).
    """
    try:
        dir_fd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition("the process has no attach socket (it has exited)") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dir_fd}/attach")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise FailedPrecondition(
            f"the process has no attach socket (it has exited): {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    sock.setblocking(False)
    return AttachConnection(sock)
