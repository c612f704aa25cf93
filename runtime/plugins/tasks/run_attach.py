"""``GET /v1/run/attach``: ``moorage run`` (attached, ``--rm``) in one websocket.

``moorage run --rm IMAGE CMD`` was four requests: the image's root filesystem,
``POST /v1/run``, the attach websocket (which started the process) and
``DELETE /v1/run/{id}``. This route makes the last three one:

* the client's first message is a text message holding a
  :class:`~runtime.api.containers.RunRequest` (its ``start`` is ignored): the
  daemon creates the container, its snapshot and its task as ``POST /v1/run``
  does (and undoes all of it if that fails);
* it attaches to the process and starts it, then speaks the attach protocol of
  :mod:`runtime.plugins.tasks.io_routes` (``attached``, output, stdin, resize,
  ``exit`` or ``error``);
* with ``remove=1`` the container goes with its task and snapshot once the
  process has ended, *before* the ``exit`` message, so a client that ends on
  that message leaves nothing behind; and if the client goes away first, or
  the start fails, the container is removed all the same (killed if it runs):
  a ``--rm`` container lives no longer than its client's connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import msgspec

from runtime.api.containers import RunRequest
from runtime.api.tasks import LOG_UNSYNCED_ANNOTATION
from runtime.core.errors import InvalidArgument, MoorageError, NotFound
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, namespace_of
from runtime.plugins.containers.api import new_container
from runtime.plugins.tasks.io_routes import relay
from runtime.plugins.tasks.run_image import with_image_rootfs
from runtime.plugins.tasks.service import TaskService

if TYPE_CHECKING:
    from runtime.plugins.images.api import Images

__all__ = ["FIRST_MESSAGE_TIMEOUT", "run_attach_routes"]

log = logging.getLogger("moorage.api")

#: Seconds the daemon waits for the run request after the upgrade.
FIRST_MESSAGE_TIMEOUT = 30.0


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "") in ("1", "true", "yes")


async def _run_request(ws: web.WebSocketResponse) -> RunRequest:
    message = await ws.receive(timeout=FIRST_MESSAGE_TIMEOUT)
    if message.type != web.WSMsgType.TEXT:
        raise InvalidArgument("the first message must be the run request (a text message)")
    try:
        return msgspec.json.decode(message.data, type=RunRequest)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"invalid run request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"run request is not valid JSON: {exc}") from exc


def run_attach_routes(service: TaskService, cgroup_parent: str,
                      images: Callable[[], Images | None] = lambda: None) -> list[Route]:
    """The one route; specs are generated under ``cgroup_parent`` as for ``POST /v1/run``.

    ``images()`` is the image service when it runs (``RunRequest.image_rootfs``).
    """

    async def run_attached(request: web.Request) -> web.StreamResponse:
        ns = namespace_of(request)
        stdin, remove = _flag(request, "stdin"), _flag(request, "remove")
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        made = ""  # the container's id once it exists
        removed = False

        async def remove_now() -> None:
            nonlocal removed
            removed = True
            with contextlib.suppress(NotFound):
                await service.remove(ns, made, force=True, snapshot=True)

        try:
            body = await with_image_rootfs(images, ns, await _run_request(ws))
            container = new_container(ns, body.container, cgroup_parent)
            if remove:
                # Its output goes to this client and its log goes with it at the exit:
                # conmon's sync of that log would only delay the exit (and its removal).
                container.spec.setdefault("annotations", {})[LOG_UNSYNCED_ANNOTATION] = "true"
            await service.run(ns, container, parent=body.parent, rootfs=body.rootfs,
                              stdin=stdin, start=False)
            made = container.id
            runtime = service.find(ns, made)
            stream = await runtime.attach(ns, made, "", start=True)
            try:
                state = await runtime.state(ns, made)
                await ws.send_str(json.dumps({"type": "attached", "pid": state.pid}))
                await relay(ws, stream, runtime, ns, made, "", stdin=stdin,
                            before_exit=remove_now if remove else None)
            finally:
                stream.close()
        except MoorageError as exc:
            if not ws.closed:
                await ws.send_str(json.dumps({"type": "error", "code": exc.code,
                                              "message": exc.message}))
        finally:
            if remove and made and not removed:
                with anyio.CancelScope(shield=True):
                    try:
                        await remove_now()
                    except MoorageError as exc:
                        log.warning("run --rm: cannot remove %s: %s", made, exc)
            await ws.close()
        return ws

    return [
        Route("GET", "/v1/run/attach", run_attached,
              "Websocket: the first message is a RunRequest; the container is created, "
              "attached to and started, and (remove=1) removed before the exit message.",
              query=(Query("stdin", "1 to forward stdin"),
                     Query("remove", "1 to remove the container when it ends or the "
                                     "client leaves"))),
    ]
