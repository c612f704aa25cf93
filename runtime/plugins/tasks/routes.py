"""Route set ``api.tasks``: ``/v1/tasks`` lifecycle, processes, metrics (I/O in :mod:`.task_io`).

Every call that names a process takes ``exec_id`` (body field or query
parameter); empty means the task's init process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.api.containers import RunRequest
from runtime.api.tasks import (
    CreateTaskRequest,
    ExecRequest,
    ExitStatus,
    KillRequest,
    ProcessInfo,
    ProcessRequest,
    ProcessState,
    ResizeRequest,
    StopRequest,
    TaskMetrics,
    TaskState,
    UpdateTaskRequest,
)
from runtime.core.config import DEFAULT_CGROUP_PARENT
from runtime.core.filters import adapt, parse
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, RouteSet, decode_body, list_route, namespace_of
from runtime.plugins.containers.api import new_container
from runtime.plugins.tasks.batch_routes import batch_routes
from runtime.plugins.tasks.io_routes import io_routes
from runtime.plugins.tasks.run_attach import run_attach_routes
from runtime.plugins.tasks.run_image import with_image_rootfs
from runtime.plugins.tasks.service import TaskService, parse_signal

if TYPE_CHECKING:
    from runtime.plugins.images.api import Images

__all__ = ["parse_signal", "task_routes"]

_EXEC = Query("exec_id", "exec process; empty for the init process")


def _true(request: web.Request, name: str) -> bool:
    return request.query.get(name, "") in ("1", "true", "yes")


def _task_fields(task: TaskState) -> dict[str, Any]:
    return {"container_id": task.container_id, "id": task.container_id, "pid": task.pid,
            "status": str(task.status), "runtime": task.runtime}


def task_routes(service: TaskService, cgroup_parent: str = DEFAULT_CGROUP_PARENT,
                images: Callable[[], Images | None] = lambda: None) -> RouteSet:
    """Routes over the task service; ``POST /v1/run`` generates specs under ``cgroup_parent``.

    ``images()`` is the image service when it runs (``RunRequest.image_rootfs``).
    """

    def ids(request: web.Request) -> tuple[str, str]:
        return namespace_of(request), request.match_info["id"]

    async def list_(request: web.Request) -> list[TaskState]:
        parsed = parse(request.query.getall("filter", []))
        found = await service.list(namespace_of(request))
        return [t for t in found if parsed.match(adapt(_task_fields(t)))]

    async def create(request: web.Request) -> TaskState:
        body = await decode_body(request, CreateTaskRequest)
        return await service.create(namespace_of(request), body)

    async def run(request: web.Request) -> TaskState:
        ns = namespace_of(request)
        body = await with_image_rootfs(images, ns, await decode_body(request, RunRequest))
        container = new_container(ns, body.container, cgroup_parent)
        return await service.run(ns, container, parent=body.parent, rootfs=body.rootfs,
                                 stdin=body.stdin, start=body.start)

    async def remove(request: web.Request) -> None:
        ns, container_id = namespace_of(request), request.match_info["id"]
        await service.remove(ns, container_id, force=_true(request, "force"),
                             snapshot=_true(request, "snapshot"))

    async def get(request: web.Request) -> TaskState:
        ns, task_id = ids(request)
        return await service.find(ns, task_id).state(ns, task_id)

    async def delete(request: web.Request) -> ExitStatus:
        ns, task_id = ids(request)
        exec_id = request.query.get("exec_id", "")
        if _true(request, "force") and not exec_id:
            return await service.delete_task(ns, task_id, force=True)
        return await service.find(ns, task_id).delete(ns, task_id, exec_id)

    async def start(request: web.Request) -> ProcessState:
        ns, task_id = ids(request)
        body = await decode_body(request, ProcessRequest)
        return await service.find(ns, task_id).start(ns, task_id, body.exec_id)

    async def kill(request: web.Request) -> None:
        ns, task_id = ids(request)
        body = await decode_body(request, KillRequest)
        await service.find(ns, task_id).kill(ns, task_id, parse_signal(body.signal),
                                             all=body.all, exec_id=body.exec_id)

    async def stop(request: web.Request) -> ExitStatus:
        ns, task_id = ids(request)
        body = await decode_body(request, StopRequest)
        number = parse_signal(body.signal) if body.signal not in ("", 0) else 0
        return await service.stop(ns, task_id, signal_number=number, timeout=body.timeout)

    async def pause(request: web.Request) -> None:
        ns, task_id = ids(request)
        await service.find(ns, task_id).pause(ns, task_id)

    async def resume(request: web.Request) -> None:
        ns, task_id = ids(request)
        await service.find(ns, task_id).resume(ns, task_id)

    async def pids(request: web.Request) -> list[ProcessInfo]:
        ns, task_id = ids(request)
        return await service.find(ns, task_id).pids(ns, task_id)

    async def wait(request: web.Request) -> ExitStatus:
        ns, task_id = ids(request)
        return await service.find(ns, task_id).wait(ns, task_id,
                                                    request.query.get("exec_id", ""))

    async def exec_(request: web.Request) -> ProcessState:
        ns, task_id = ids(request)
        body = await decode_body(request, ExecRequest)
        return await service.find(ns, task_id).exec(ns, task_id, body)

    async def resize(request: web.Request) -> None:
        ns, task_id = ids(request)
        body = await decode_body(request, ResizeRequest)
        await service.find(ns, task_id).resize(ns, task_id, body.width, body.height,
                                               body.exec_id)

    async def close_stdin(request: web.Request) -> None:
        ns, task_id = ids(request)
        body = await decode_body(request, ProcessRequest)
        await service.find(ns, task_id).close_stdin(ns, task_id, body.exec_id)

    async def update(request: web.Request) -> None:
        ns, task_id = ids(request)
        body = await decode_body(request, UpdateTaskRequest)
        await service.find(ns, task_id).update(ns, task_id, body.resources)

    async def metrics(request: web.Request) -> TaskMetrics:
        ns, task_id = ids(request)
        return await service.find(ns, task_id).metrics(ns, task_id)

    one = "/v1/tasks/{id}"
    return [
        list_route("/v1/tasks", list_, "List tasks.", list[TaskState],
                   "filter (id, container_id, pid, status, runtime)"),
        Route("POST", "/v1/tasks", create, "Create the task of a container (not started).",
              body=CreateTaskRequest, response=TaskState, status=201),
        Route("GET", one, get, "One task with its execs.", response=TaskState),
        Route("DELETE", one, delete,
              "Delete a stopped or never started task (or, with exec_id, an exec); "
              "force=1 kills a running task and waits for its exit first.",
              response=ExitStatus,
              query=(_EXEC, Query("force", "1 to kill a running task first"))),
        Route("POST", one + "/start", start, "Start the init process or an exec.",
              body=ProcessRequest, response=ProcessState),
        Route("POST", one + "/kill", kill, "Send a signal.", body=KillRequest),
        Route("POST", one + "/stop", stop,
              "Stop the task: its stop signal (the image's StopSignal unless the body names "
              "one), then SIGKILL to every process after timeout seconds; its exit.",
              body=StopRequest, response=ExitStatus),
        Route("POST", one + "/pause", pause, "Freeze the task."),
        Route("POST", one + "/resume", resume, "Thaw the task."),
        Route("GET", one + "/pids", pids, "Processes of the task.",
              response=list[ProcessInfo]),
        Route("GET", one + "/wait", wait, "Block until the process exits (long poll).",
              response=ExitStatus, query=(_EXEC,)),
        Route("POST", one + "/exec", exec_, "Add an exec process (start it separately).",
              body=ExecRequest, response=ProcessState, status=201),
        Route("POST", one + "/resize", resize, "Resize a process's terminal.",
              body=ResizeRequest),
        Route("POST", one + "/close-stdin", close_stdin, "Close a process's stdin.",
              body=ProcessRequest),
        Route("POST", one + "/update", update, "Change the task's resource limits.",
              body=UpdateTaskRequest),
        Route("GET", one + "/metrics", metrics, "CPU, memory and pids of the task's cgroup.",
              response=TaskMetrics),
        *io_routes(service),
        *batch_routes(service),
        *run_attach_routes(service, cgroup_parent, images),
        Route("POST", "/v1/run", run,
              "Create a container, prepare its snapshot and create its task (start=true: "
              "start it too) in one call.", body=RunRequest, response=TaskState, status=201),
        Route("DELETE", "/v1/run/{id}", remove,
              "Delete a container (force=1: with its task, killed first if it runs) and, "
              "with snapshot=1, its snapshot.",
              query=(Query("force", "1 to delete its task too, killing it first if it runs"),
                     Query("snapshot", "1 to remove the container's snapshot too"))),
    ]
