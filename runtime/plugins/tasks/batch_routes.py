"""Batch routes of ``api.tasks``: kill, delete or remove many containers in one request.

Each id gets exactly what its single request would do; the ids are worked on
side by side (:data:`PARALLEL` at a time: each is a ``runc`` call or two and
some disk writes) and each failure is reported in its result, never as the
request's status. See :mod:`runtime.api.batch` for the wire types.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from runtime.api.batch import (
    MAX_BATCH,
    BatchResult,
    DeleteTasksRequest,
    ItemResult,
    KillNamedRequest,
    KillTasksRequest,
    RemoveContainersRequest,
    RemoveNamedRequest,
    StopNamedRequest,
)
from runtime.core.errors import InvalidArgument, MoorageError
from runtime.pkg.http import web
from runtime.plugins.api.api import Route, decode_body, namespace_of
from runtime.plugins.tasks.service import TaskService, parse_signal
from runtime.plugins.tasks.verbs import Verbs

__all__ = ["PARALLEL", "batch_routes", "for_each_id"]

log = logging.getLogger("moorage.tasks")

#: Ids worked on at once within one request.
PARALLEL = 8


async def for_each_id(ids: list[str], action: Callable[[str], Awaitable[object]]) -> BatchResult:
    """Run ``action`` for every distinct id, :data:`PARALLEL` at a time; one result each.

    Raises:
        InvalidArgument: No ids, or more than :data:`~runtime.api.batch.MAX_BATCH`.
    """
    if not ids:
        raise InvalidArgument("ids: name at least one")
    if len(ids) > MAX_BATCH:
        raise InvalidArgument(f"ids: at most {MAX_BATCH} per request, got {len(ids)}")
    results = [ItemResult(id=i) for i in dict.fromkeys(ids)]
    limiter = anyio.CapacityLimiter(PARALLEL)

    async def one(item: ItemResult) -> None:
        async with limiter:
            try:
                await action(item.id)
            except MoorageError as exc:
                item.code, item.message = exc.code, exc.message
            except Exception as exc:
                # What the single request would answer as a 500, reported for this id only.
                log.exception("batch action on %s failed", item.id)
                item.code, item.message = "internal", f"{type(exc).__name__}: {exc}"

    async with anyio.create_task_group() as tg:
        for item in results:
            tg.start_soon(one, item)
    return BatchResult(results=results)


def batch_routes(service: TaskService) -> list[Route]:
    """``POST /v1/run/remove``, ``/v1/tasks/kill``, ``/v1/tasks/delete`` and ``/v1/verbs/*``."""
    verbs = Verbs(service)

    async def remove(request: web.Request) -> BatchResult:
        body = await decode_body(request, RemoveContainersRequest)
        ns = namespace_of(request)
        return await for_each_id(body.ids, lambda cid: service.remove(
            ns, cid, force=body.force, snapshot=body.snapshot))

    async def kill(request: web.Request) -> BatchResult:
        body = await decode_body(request, KillTasksRequest)
        ns, signum = namespace_of(request), parse_signal(body.signal)
        return await for_each_id(body.ids, lambda cid: service.find(ns, cid).kill(
            ns, cid, signum, all=body.all))

    async def delete(request: web.Request) -> BatchResult:
        body = await decode_body(request, DeleteTasksRequest)
        ns = namespace_of(request)

        async def one(cid: str) -> object:
            if body.force:
                return await service.delete_task(ns, cid, force=True)
            return await service.find(ns, cid).delete(ns, cid, "")

        return await for_each_id(body.ids, one)

    async def verb_rm(request: web.Request) -> BatchResult:
        body = await decode_body(request, RemoveNamedRequest)
        return await verbs.rm(namespace_of(request), body.names, force=body.force)

    async def verb_stop(request: web.Request) -> BatchResult:
        body = await decode_body(request, StopNamedRequest)
        return await verbs.stop(namespace_of(request), body.names, signal=body.signal,
                                timeout=body.timeout)

    async def verb_kill(request: web.Request) -> BatchResult:
        body = await decode_body(request, KillNamedRequest)
        return await verbs.kill(namespace_of(request), body.names, signal=body.signal)

    return [
        Route("POST", "/v1/run/remove", remove,
              "DELETE /v1/run/{id} for many containers in one request; one result per id.",
              body=RemoveContainersRequest, response=BatchResult),
        Route("POST", "/v1/tasks/kill", kill,
              "Signal the init process of many tasks in one request; one result per id.",
              body=KillTasksRequest, response=BatchResult),
        Route("POST", "/v1/tasks/delete", delete,
              "Delete many tasks in one request (force: kill running ones first); "
              "one result per id.", body=DeleteTasksRequest, response=BatchResult),
        Route("POST", "/v1/verbs/rm", verb_rm,
              "moorage rm [-f] NAME...: containers by id, name or id prefix, with their tasks "
              "and snapshots (running ones only with force); one result per name.",
              body=RemoveNamedRequest, response=BatchResult),
        Route("POST", "/v1/verbs/stop", verb_stop,
              "moorage stop NAME...: hold the restart policy, the stop signal, SIGKILL after "
              "timeout seconds; one result per name.", body=StopNamedRequest,
              response=BatchResult),
        Route("POST", "/v1/verbs/kill", verb_kill,
              "moorage kill NAME...: signal running containers; one result per name.",
              body=KillNamedRequest, response=BatchResult),
    ]
