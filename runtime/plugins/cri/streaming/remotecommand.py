"""Exec and attach over the Kubernetes remote-command protocol, whatever carries it.

A transport (SPDY streams or websocket channels) hands :func:`run_exec` and
:func:`run_attach` a :class:`CommandStreams`; they drive the runtime's exec and
attach machinery (``Runtime.exec``, ``attach``, ``resize``, ``wait``) and
answer on the error stream the way the kubelet's streaming server does:

* protocol v4 and later: a ``Status`` JSON document, ``Success`` or
  ``Failure`` with reason ``NonZeroExitCode`` and an ``ExitCode`` cause
  carrying the exit status (client-go turns it into ``exit code N``);
* protocols v1 to v3: nothing on success, the error message as text otherwise.

The resize stream carries ``{"Width": W, "Height": H}`` documents back to back.
An exec whose client goes away before it ends is killed; the exec process is
always deleted, so 200 streams leave 200 nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from runtime.api.tasks import STDERR, STDOUT, ExecRequest
from runtime.core.errors import MoorageError
from runtime.plugins.runtime.api import AttachStream, Runtime

__all__ = [
    "CommandStreams",
    "OutputSink",
    "ResizeDecoder",
    "failure_status",
    "run_attach",
    "run_exec",
    "success_status",
]

log = logging.getLogger("moorage.cri.streaming")

#: How long a killed exec (its client gone) may take to be reaped.
_KILL_GRACE = 10.0


class OutputSink(Protocol):
    """Where one output stream goes: a SPDY stream or a websocket channel."""

    async def send(self, data: bytes) -> None:
        """Write bytes; may raise when the client reset the stream."""
        ...

    async def close(self) -> None:
        """End the stream (the client reads end-of-file); never raises."""
        ...


@dataclass(kw_only=True)
class CommandStreams:
    """The client's side of one exec or attach.

    Attributes:
        stdin: Reads the client's stdin; ``b""`` at its end. None: no stdin.
        stdout: Standard output (all output with a tty). None: discarded.
        stderr: Standard error. None: discarded.
        resize: Reads the raw resize stream; ``b""`` at its end. None: no resize.
        error: The error stream, written once at the end.
        status_json: Whether the error stream takes v4 Status JSON (else text).
        client_gone: Set when the connection ended.
    """

    stdin: Callable[[], Awaitable[bytes]] | None = None
    stdout: OutputSink | None = None
    stderr: OutputSink | None = None
    resize: Callable[[], Awaitable[bytes]] | None = None
    error: OutputSink
    status_json: bool = True
    client_gone: anyio.Event = field(default_factory=anyio.Event)


def _status(**fields: Any) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, **fields},
                      separators=(",", ":")).encode()


def success_status() -> bytes:
    """The v4 Status of a command that succeeded."""
    return _status(status="Success")


def failure_status(message: str, *, exit_code: int | None = None) -> bytes:
    """The v4 Status of a failure; with ``exit_code``, a non-zero exit (client-go's format)."""
    if exit_code is not None:
        return _status(status="Failure", reason="NonZeroExitCode",
                       message=f"command terminated with non-zero exit code: exit status "
                               f"{exit_code}",
                       details={"causes": [{"reason": "ExitCode", "message": str(exit_code)}]})
    return _status(status="Failure", reason="InternalError", code=500,
                   message=f"Internal error occurred: {message}",
                   details={"causes": [{"message": message}]})


class ResizeDecoder:
    """Terminal sizes out of the resize stream: JSON documents, maybe split or glued."""

    def __init__(self, limit: int = 4096) -> None:
        self._buffer = ""
        self._json = json.JSONDecoder()
        self._limit = limit

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """The ``(width, height)`` pairs completed by ``data``; ValueError for garbage."""
        self._buffer += data.decode("utf-8", errors="replace")
        sizes: list[tuple[int, int]] = []
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return sizes
            try:
                value, end = self._json.raw_decode(text)
            except json.JSONDecodeError:
                if len(text) > self._limit:
                    raise ValueError("resize stream is not JSON") from None
                self._buffer = text
                return sizes
            self._buffer = text[end:]
            if not isinstance(value, dict):
                raise ValueError(f"resize event {value!r} is not an object")
            try:
                width, height = int(value["Width"]), int(value["Height"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"resize event {value!r} lacks Width/Height") from None
            if 0 < width <= 0xFFFF and 0 < height <= 0xFFFF:
                sizes.append((width, height))


async def _write_status(streams: CommandStreams, *, message: str = "",
                        exit_code: int | None = None) -> None:
    """Close the outputs, then write the outcome on the error stream and close it."""
    for sink in (streams.stdout, streams.stderr):
        if sink is not None:
            await sink.close()
    if streams.status_json:
        if message or exit_code:
            body = failure_status(message, exit_code=exit_code or None)
        else:
            body = success_status()
    elif exit_code:
        body = f"command terminated with non-zero exit code: exit status {exit_code}".encode()
    else:
        body = message.encode()
    if body:
        with contextlib.suppress(Exception):
            await streams.error.send(body)
    await streams.error.close()


async def _relay(streams: CommandStreams, connection: AttachStream, *, tty: bool,
                 resize: Callable[[int, int], Awaitable[None]]) -> bool:
    """Copy output out and input in.

    Returns:
        True once the process's output ended, False if the client left first.
    """
    ended = False
    async with anyio.create_task_group() as tg:

        async def output() -> None:
            nonlocal ended
            while (item := await connection.receive()) is not None:
                channel, data = item
                sink = streams.stdout if tty or channel == STDOUT else (
                    streams.stderr if channel == STDERR else None)
                if sink is not None:
                    try:
                        await sink.send(data)
                    except Exception as exc:  # the client reset that stream: drop its share
                        log.debug("streaming: output dropped: %s", exc)
            ended = True
            tg.cancel_scope.cancel()

        async def input_(read: Callable[[], Awaitable[bytes]]) -> None:
            while data := await read():
                try:
                    await connection.send(data)
                except MoorageError:
                    return  # the process closed its stdin
            connection.close_stdin()

        async def resizes(read: Callable[[], Awaitable[bytes]]) -> None:
            decoder = ResizeDecoder()
            while data := await read():
                try:
                    sizes = decoder.feed(data)
                except ValueError as exc:
                    log.info("streaming: resize stream ignored: %s", exc)
                    return
                if not sizes:
                    continue
                # Only the latest of a burst matters (and conmon takes one
                # message per read of its control fifo).
                try:
                    await resize(*sizes[-1])
                except MoorageError as exc:
                    log.debug("streaming: resize failed: %s", exc)

        async def client_gone() -> None:
            await streams.client_gone.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(output)
        if streams.stdin is not None:
            tg.start_soon(input_, streams.stdin)
        if tty and streams.resize is not None:
            tg.start_soon(resizes, streams.resize)
        tg.start_soon(client_gone)
    return ended


async def run_exec(streams: CommandStreams, runtime: Runtime, namespace: str,
                   container_id: str, cmd: list[str], *, tty: bool, stdin: bool) -> None:
    """Run ``cmd`` in the container as an exec process wired to ``streams``."""
    exec_id = f"stream-{secrets.token_hex(8)}"
    request = ExecRequest(exec_id=exec_id, args=list(cmd), terminal=tty, stdin=stdin)
    if not tty:
        await _run_direct(streams, runtime, namespace, container_id, request)
        return
    try:
        await runtime.exec(namespace, container_id, request)
    except MoorageError as exc:
        await _write_status(streams, message=f"cannot exec in container {container_id!r}: "
                                             f"{exc.message}")
        return
    ended = False
    try:
        try:
            connection = await runtime.attach(namespace, container_id, exec_id, start=True)
        except MoorageError as exc:
            await _write_status(streams, message=f"cannot start {cmd!r} in container "
                                                 f"{container_id!r}: {exc.message}")
            return
        try:
            ended = await _relay(
                streams, connection, tty=tty,
                resize=lambda w, h: runtime.resize(namespace, container_id, w, h, exec_id))
        finally:
            connection.close()
        if ended:
            result = await runtime.wait(namespace, container_id, exec_id)
            await _write_status(streams, exit_code=result.exit_status)
    finally:
        with anyio.CancelScope(shield=True):
            await _reap(runtime, namespace, container_id, exec_id, kill=not ended)


async def _run_direct(streams: CommandStreams, runtime: Runtime, namespace: str,
                      container_id: str, request: ExecRequest) -> None:
    """:func:`run_exec` without a terminal: the runtime's own pipes, no monitor."""
    try:
        stream = await runtime.exec_stream(namespace, container_id, request)
    except MoorageError as exc:
        await _write_status(streams, message=f"cannot start {request.args!r} in container "
                                             f"{container_id!r}: {exc.message}")
        return
    ended = False
    try:
        ended = await _relay(streams, stream, tty=False, resize=_no_resize)
    finally:
        with anyio.CancelScope(shield=True):
            status = await stream.end(kill=not ended)
    if ended:
        await _write_status(streams, exit_code=status)


async def _no_resize(width: int, height: int) -> None:
    """Without a terminal there is nothing to resize."""


async def _reap(runtime: Runtime, namespace: str, container_id: str, exec_id: str, *,
                kill: bool) -> None:
    """Delete the exec process; kill it first if it may still run."""
    try:
        if kill:
            with contextlib.suppress(MoorageError):
                await runtime.kill(namespace, container_id, signal.SIGKILL, exec_id=exec_id)
            with anyio.move_on_after(_KILL_GRACE), contextlib.suppress(MoorageError):
                await runtime.wait(namespace, container_id, exec_id)
        await runtime.delete(namespace, container_id, exec_id)
    except MoorageError as exc:
        log.info("streaming: exec %s in %s not deleted: %s", exec_id, container_id, exc)


async def run_attach(streams: CommandStreams, runtime: Runtime, namespace: str,
                     container_id: str, *, tty: bool) -> None:
    """Wire ``streams`` to the container's init process until it exits or the client leaves."""
    try:
        connection = await runtime.attach(namespace, container_id)
    except MoorageError as exc:
        await _write_status(streams, message=f"cannot attach to container {container_id!r}: "
                                             f"{exc.message}")
        return
    try:
        ended = await _relay(
            streams, connection, tty=tty,
            resize=lambda w, h: runtime.resize(namespace, container_id, w, h))
    finally:
        connection.close()
    if ended:
        # As the kubelet's attach: the container's own exit is not the session's error.
        await _write_status(streams)
