"""Relay a local terminal to an attach session: raw mode, stdin, output, window resizes.

One thread, one ``select`` over the websocket, stdin and a self-pipe woken by
``SIGWINCH``: no output is reordered and the terminal is always restored, even
when the connection breaks.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty

from runtime.client.attach import Attachment, Exited, Output, Started

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call),
# nor collections.abc and types.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from signal import SIGINT, SIGTERM, SIGWINCH
    from signal import signal as set_handler
    from types import FrameType, TracebackType
    from typing import IO, Any
else:
    # The C module behind `signal`: that one builds its enums, and `enum` (with
    # `functools` and `collections`) would be the largest import of `moorage run`.
    from _signal import SIGINT, SIGTERM, SIGWINCH
    from _signal import signal as set_handler

__all__ = ["raw_terminal", "relay", "terminal_size"]

_STDERR = 3
_READ = 65536


class raw_terminal:
    """Put the terminal ``fd`` in raw mode for a ``with`` block (no-op if it is not a tty).

    A class rather than a ``contextlib.contextmanager``: ``contextlib`` is an
    import ``moorage run`` can do without.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd if fd is not None and os.isatty(fd) else None
        self.saved: Any = None

    def __enter__(self) -> None:
        if self.fd is not None:
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.fd is not None and self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def terminal_size(fd: int) -> tuple[int, int] | None:
    """``(columns, lines)`` of the terminal on ``fd``, or ``None`` if it is none."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.columns, size.lines


def _write(stream: IO[bytes], data: bytes) -> None:
    stream.write(data)
    stream.flush()


def relay(
    attachment: Attachment,
    *,
    stdin: bool,
    tty_mode: bool,
    on_signal: Callable[[int], None] | None = None,
) -> int | None:
    """Copy stdin to the session and its output to stdout/stderr until the process ends.

    Args:
        attachment: The open session.
        stdin: Forward this process's stdin (closing the remote stdin at EOF).
        tty_mode: The process has a terminal: put ours in raw mode and follow
            its size.
        on_signal: Called with SIGINT/SIGTERM when they arrive outside tty mode
            (to forward them to the container).

    Returns:
        The exit status the server reported, or ``None`` if the session ended
        without one.
    """
    in_fd = sys.stdin.fileno() if stdin else None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_handlers: dict[int, object] = {}

    def wake(signum: int, _: FrameType | None) -> None:
        try:  # noqa: SIM105 - contextlib is an import `moorage run` does without
            os.write(wake_w, bytes([signum]))
        except OSError:
            pass  # the pipe is full: a wake-up is pending anyway

    watched = [SIGWINCH] if tty_mode else [SIGINT, SIGTERM]
    for watched_signal in watched:
        old_handlers[watched_signal] = set_handler(watched_signal, wake)
    try:
        with raw_terminal(in_fd if tty_mode else None):
            if tty_mode:
                _resize(attachment)
            return _loop(attachment, in_fd, wake_r, on_signal)
    finally:
        for signum, handler in old_handlers.items():
            set_handler(signum, handler)  # type: ignore[arg-type]
        os.close(wake_r)
        os.close(wake_w)


def _resize(attachment: Attachment) -> None:
    size = terminal_size(sys.stdout.fileno())
    if size is not None:
        attachment.resize(*size)


def _loop(attachment: Attachment, in_fd: int | None, wake_r: int,
          on_signal: Callable[[int], None] | None) -> int | None:
    out, err = sys.stdout.buffer, sys.stderr.buffer
    pending = attachment.buffered()
    while True:
        for message in pending:
            if isinstance(message, Output):
                _write(err if message.stream == _STDERR else out, message.data)
            elif isinstance(message, Exited):
                return message.exit_status
            elif isinstance(message, Started):
                continue
        sources = [attachment.fileno(), wake_r, *([in_fd] if in_fd is not None else [])]
        try:
            ready, _, _ = select.select(sources, [], [])
        except InterruptedError:
            ready = []
        pending = []
        if wake_r in ready:
            for signum in os.read(wake_r, 64):
                if signum == SIGWINCH:
                    _resize(attachment)
                elif on_signal is not None:
                    on_signal(signum)
        if in_fd is not None and in_fd in ready:
            data = os.read(in_fd, _READ)
            if data:
                attachment.send_stdin(data)
            else:
                attachment.close_stdin()
                in_fd = None
        if attachment.fileno() in ready:
            pending = attachment.read_available()
