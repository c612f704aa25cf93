"""Task I/O routes: ``GET /v1/tasks/{id}/logs`` (NDJSON) and ``/attach`` (a websocket).

Attach protocol (one websocket per process):

* client -> server, binary: bytes for the process's stdin;
* client -> server, text: ``{"type": "resize", "width": W, "height": H}`` or
  ``{"type": "close_stdin"}``;
* server -> client, binary: one byte naming the stream (2 stdout, 3 stderr)
  followed by output;
* server -> client, text: ``{"type": "attached", "pid": N}`` first, then
  ``{"type": "exit", "exit_status": N, "exited_at": "..."}`` when the process
  ended, or ``{"type": "error", "code": ..., "message": ...}``; the server then
  closes the websocket.

With ``start=1`` the process is started only once the server is connected to
it, so no output is lost (``moorage run`` uses this).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from runtime.core.errors import MoorageError, NotFound
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, RouteSet, namespace_of
from runtime.plugins.runtime.api import AttachStream, Runtime
from runtime.plugins.tasks.service import TaskService

__all__ = ["io_routes", "relay"]

log = logging.getLogger("moorage.api")
_encoder = msgspec.json.Encoder()


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "") in ("1", "true", "yes")


def io_routes(service: TaskService) -> RouteSet:
    """The logs and attach routes."""

    async def logs(request: web.Request) -> web.StreamResponse:
        ns, task_id = namespace_of(request), request.match_info["id"]
        # Looked up before the response starts, so NotFound is a proper 404.
        entries = service.find(ns, task_id).logs(ns, task_id, request.query.get("exec_id", ""),
                                                 follow=_flag(request, "follow"))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for entry in entries:
            await response.write(_encoder.encode(entry) + b"\n")
        await response.write_eof()
        return response

    async def attach(request: web.Request) -> web.StreamResponse:
        ns, task_id = namespace_of(request), request.match_info["id"]
        exec_id = request.query.get("exec_id", "")
        runtime = service.find(ns, task_id)
        # Checked before the upgrade, so an unknown process is a plain 404.
        if exec_id and exec_id not in {e.id for e in (await runtime.state(ns, task_id)).execs}:
            raise NotFound(f"exec {exec_id!r} not found in task {task_id!r}")
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        try:
            stream = await runtime.attach(ns, task_id, exec_id, start=_flag(request, "start"))
        except MoorageError as exc:
            await ws.send_str(json.dumps({"type": "error", "code": exc.code,
                                          "message": exc.message}))
            await ws.close()
            return ws
        try:
            state = await runtime.state(ns, task_id)
            pid = state.pid if not exec_id else next(
                (e.pid for e in state.execs if e.id == exec_id), 0)
            await ws.send_str(json.dumps({"type": "attached", "pid": pid}))
            await relay(ws, stream, runtime, ns, task_id, exec_id,
                        stdin=_flag(request, "stdin"))
        finally:
            stream.close()
            await ws.close()
        return ws

    one = "/v1/tasks/{id}"
    exec_query = Query("exec_id", "exec process; empty for the init process")
    return [
        Route("GET", one + "/logs", logs,
              "A process's output as NDJSON LogEntry lines; follow=1 streams until it exits.",
              query=(exec_query, Query("follow", "1 to keep streaming")),
              stream="application/x-ndjson"),
        Route("GET", one + "/attach", attach,
              "Websocket to a process's stdio (see the module documentation).",
              query=(exec_query, Query("stdin", "1 to forward stdin"),
                     Query("start", "1 to start the process once attached"))),
    ]


async def relay(ws: web.WebSocketResponse, stream: AttachStream, runtime: Runtime,
                ns: str, task_id: str, exec_id: str, *, stdin: bool,
                before_exit: Callable[[], Awaitable[None]] | None = None) -> None:
    """Copy output to the websocket and input to the process until either side ends.

    ``before_exit`` runs once the process has ended, before the exit message
    goes out (``/v1/run/attach`` removes the container there, so that the
    client, which ends on that message, leaves nothing behind).
    """
    async with anyio.create_task_group() as tg:

        async def output() -> None:
            while (item := await stream.receive()) is not None:
                channel, data = item
                await ws.send_bytes(bytes([channel]) + data)
            # The monitor hung up: the process is gone; report how it ended.
            result = await runtime.wait(ns, task_id, exec_id)
            if before_exit is not None:
                await before_exit()
            await ws.send_str(json.dumps({
                "type": "exit", "exit_status": result.exit_status,
                "exited_at": result.exited_at.isoformat() if result.exited_at else None}))
            tg.cancel_scope.cancel()

        async def input_() -> None:
            async for message in ws:
                if message.type == web.WSMsgType.BINARY and stdin:
                    await stream.send(message.data)
                elif message.type == web.WSMsgType.TEXT:
                    await _control(message.data, stream, runtime, ns, task_id, exec_id)
                elif message.type in (web.WSMsgType.CLOSE, web.WSMsgType.ERROR):
                    break
            # The client left: stop relaying output too.
            tg.cancel_scope.cancel()

        tg.start_soon(output)
        tg.start_soon(input_)


async def _control(raw: str, stream: AttachStream, runtime: Runtime, ns: str, task_id: str,
                   exec_id: str) -> None:
    try:
        command: dict[str, Any] = json.loads(raw)
    except ValueError:
        return
    try:
        if command.get("type") == "resize":
            await runtime.resize(ns, task_id, int(command["width"]), int(command["height"]),
                                 exec_id)
        elif command.get("type") == "close_stdin":
            stream.close_stdin()
    except (MoorageError, KeyError, ValueError) as exc:
        # A bad resize must not end the session; the daemon log keeps it.
        log.debug("attach control %r failed: %s", raw, exc)
