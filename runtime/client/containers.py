"""Client methods for containers and tasks, mixed into :class:`runtime.client.Client`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import msgspec

from runtime.api.containers import (
    Container,
    ContainerCreateRequest,
    ContainerUpdateRequest,
    RuntimeInfo,
)
from runtime.api.mounts import Mount
from runtime.api.specs import ImageConfig, SpecOptions
from runtime.api.tasks import (
    CreateTaskRequest,
    ExecRequest,
    ExitStatus,
    KillRequest,
    LogEntry,
    ProcessInfo,
    ProcessRequest,
    ProcessState,
    ResizeRequest,
    TaskMetrics,
    TaskState,
    UpdateTaskRequest,
)
from runtime.client.attach import Attachment, open_attachment

__all__ = ["ContainersMixin"]


def _id(value: str) -> str:
    return quote(value, safe="")


class ContainersMixin:
    """``/v1/containers`` and ``/v1/tasks``; see :class:`runtime.client.Client` for plumbing."""

    if TYPE_CHECKING:
        address: str
        timeout: float | None

        def call(self, method: str, path: str, type_: Any = None, **kw: Any) -> Any:  # noqa: D102
            ...

        def stream_lines(self, method: str, path: str, **kw: Any) -> Iterator[bytes]:  # noqa: D102
            ...

        def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]: ...

        @staticmethod
        def _error(status: int, raw: bytes) -> Any: ...

    # -- containers -------------------------------------------------------------------

    def containers(self, filters: list[str] | None = None) -> list[Container]:
        """Containers of the namespace."""
        result: list[Container] = self.call("GET", "/v1/containers", list[Container],
                                            query={"filter": filters or []})
        return result

    def container(self, container_id: str) -> Container:
        """One container."""
        result: Container = self.call("GET", f"/v1/containers/{_id(container_id)}", Container)
        return result

    def create_container(
        self,
        container_id: str,
        *,
        image: str = "",
        runtime: str = "runc",
        runtime_options: Mapping[str, Any] | None = None,
        spec: dict[str, Any] | None = None,
        spec_options: SpecOptions | None = None,
        image_config: ImageConfig | None = None,
        snapshotter: str = "",
        snapshot_key: str = "",
        labels: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
        allow_privileged: bool = False,
    ) -> Container:
        """Create a container; the daemon generates the spec unless ``spec`` is given.

        ``allow_privileged`` must be set for a spec with host namespaces or extra
        privileges (``spec_options.privileged`` included); the daemon refuses it otherwise.
        """
        body = ContainerCreateRequest(
            id=container_id, image=image,
            runtime=RuntimeInfo(name=runtime, options=dict(runtime_options or {})),
            spec=spec, spec_options=spec_options, image_config=image_config,
            snapshotter=snapshotter, snapshot_key=snapshot_key, labels=dict(labels or {}),
            extensions=dict(extensions or {}), allow_privileged=allow_privileged,
        )  # fmt: skip
        result: Container = self.call("POST", "/v1/containers", Container, body=body)
        return result

    def update_container(
        self,
        container_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        spec: dict[str, Any] | None = None,
        image: str | None = None,
        snapshot_key: str | None = None,
        extensions: Mapping[str, Any] | None = None,
        allow_privileged: bool = False,
    ) -> Container:
        """Update mutable fields; labels merge and an empty value removes one."""
        body = ContainerUpdateRequest(
            labels=dict(labels) if labels is not None else None, spec=spec, image=image,
            snapshot_key=snapshot_key,
            extensions=dict(extensions) if extensions is not None else None,
            allow_privileged=allow_privileged,
        )  # fmt: skip
        result: Container = self.call("PATCH", f"/v1/containers/{_id(container_id)}",
                                      Container, body=body)
        return result

    def delete_container(self, container_id: str) -> None:
        """Delete a container that has no task."""
        self.call("DELETE", f"/v1/containers/{_id(container_id)}")

    def run(self, container: ContainerCreateRequest | Mapping[str, Any], *, parent: str = "",
            rootfs: Sequence[Mount | Mapping[str, Any]] | None = None, stdin: bool = False,
            start: bool = False) -> TaskState:
        """Create a container, prepare its snapshot on ``parent`` and create its task at once.

        Args:
            container: The container, as for :meth:`create_container` (a request or
                the equivalent JSON object); its ``snapshotter`` and ``snapshot_key``
                name the snapshot to prepare.
            parent: The image's top chain ID (:meth:`image_rootfs`); empty: no snapshot.
            rootfs: Root filesystem mounts when there is no snapshot.
            stdin: Keep the init process's stdin open for attaching.
            start: Start the task too; otherwise attach with ``start=True``.
        """
        body = {"container": container, "parent": parent, "rootfs": list(rootfs or []),
                "stdin": stdin, "start": start}
        result: TaskState = self.call("POST", "/v1/run", TaskState, body=body)
        return result

    def remove(self, container_id: str, *, force: bool = False, snapshot: bool = False) -> None:
        """Delete a container with its task and, with ``snapshot``, its snapshot.

        ``force`` kills a running task first (otherwise a running task is an error).
        """
        query = {k: "1" for k, on in (("force", force), ("snapshot", snapshot)) if on}
        self.call("DELETE", f"/v1/run/{_id(container_id)}", query=query or None)

    # -- tasks --------------------------------------------------------------------------

    def tasks(self, filters: list[str] | None = None) -> list[TaskState]:
        """Tasks of the namespace."""
        result: list[TaskState] = self.call("GET", "/v1/tasks", list[TaskState],
                                            query={"filter": filters or []})
        return result

    def task(self, container_id: str) -> TaskState:
        """One task."""
        result: TaskState = self.call("GET", f"/v1/tasks/{_id(container_id)}", TaskState)
        return result

    def create_task(self, container_id: str, *, rootfs: Sequence[Mount] | None = None,
                    stdin: bool = False, terminal: bool | None = None) -> TaskState:
        """Create a container's task (created, not started)."""
        body = CreateTaskRequest(container_id=container_id, rootfs=list(rootfs or []),
                                 stdin=stdin, terminal=terminal)
        result: TaskState = self.call("POST", "/v1/tasks", TaskState, body=body)
        return result

    def start_task(self, container_id: str, exec_id: str = "") -> ProcessState:
        """Start the init process or an exec."""
        result: ProcessState = self.call("POST", f"/v1/tasks/{_id(container_id)}/start",
                                         ProcessState, body=ProcessRequest(exec_id=exec_id))
        return result

    def kill_task(self, container_id: str, signal: int | str = 15, *, all: bool = False,
                  exec_id: str = "") -> None:
        """Send a signal (number or name) to a process, or every process with ``all``."""
        self.call("POST", f"/v1/tasks/{_id(container_id)}/kill",
                  body=KillRequest(signal=signal, all=all, exec_id=exec_id))

    def delete_task(self, container_id: str, exec_id: str = "") -> ExitStatus:
        """Delete a stopped task (or exec); returns how it ended."""
        query = {"exec_id": exec_id} if exec_id else None
        result: ExitStatus = self.call("DELETE", f"/v1/tasks/{_id(container_id)}", ExitStatus,
                                       query=query)
        return result

    def pause_task(self, container_id: str) -> None:
        """Freeze a task."""
        self.call("POST", f"/v1/tasks/{_id(container_id)}/pause")

    def resume_task(self, container_id: str) -> None:
        """Thaw a task."""
        self.call("POST", f"/v1/tasks/{_id(container_id)}/resume")

    def task_pids(self, container_id: str) -> list[ProcessInfo]:
        """Processes of a task."""
        result: list[ProcessInfo] = self.call("GET", f"/v1/tasks/{_id(container_id)}/pids",
                                              list[ProcessInfo])
        return result

    def wait_task(self, container_id: str, exec_id: str = "",
                  timeout: float | None = None) -> ExitStatus:
        """Block until the process exits (``timeout``: socket timeout, ``None`` forever)."""
        query = {"exec_id": exec_id} if exec_id else None
        result: ExitStatus = self.call("GET", f"/v1/tasks/{_id(container_id)}/wait",
                                       ExitStatus, query=query, timeout=timeout)
        return result

    def exec_task(self, container_id: str, exec_id: str, args: Sequence[str], *,
                  env: Sequence[str] = (), cwd: str = "", user: str = "",
                  terminal: bool = False, stdin: bool = False) -> ProcessState:
        """Add an exec process (start it with :meth:`start_task` or :meth:`attach_task`)."""
        body = ExecRequest(exec_id=exec_id, args=list(args), env=list(env), cwd=cwd, user=user,
                           terminal=terminal, stdin=stdin)
        result: ProcessState = self.call("POST", f"/v1/tasks/{_id(container_id)}/exec",
                                         ProcessState, body=body)
        return result

    def resize_task(self, container_id: str, width: int, height: int,
                    exec_id: str = "") -> None:
        """Resize a process's terminal."""
        self.call("POST", f"/v1/tasks/{_id(container_id)}/resize",
                  body=ResizeRequest(width=width, height=height, exec_id=exec_id))

    def close_task_stdin(self, container_id: str, exec_id: str = "") -> None:
        """Close a process's stdin."""
        self.call("POST", f"/v1/tasks/{_id(container_id)}/close-stdin",
                  body=ProcessRequest(exec_id=exec_id))

    def update_task(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` to a task."""
        self.call("POST", f"/v1/tasks/{_id(container_id)}/update",
                  body=UpdateTaskRequest(resources=resources))

    def task_metrics(self, container_id: str) -> TaskMetrics:
        """CPU, memory and pids of a task."""
        result: TaskMetrics = self.call("GET", f"/v1/tasks/{_id(container_id)}/metrics",
                                        TaskMetrics)
        return result

    def task_logs(self, container_id: str, exec_id: str = "", *,
                  follow: bool = False) -> Iterator[LogEntry]:
        """A process's output; with ``follow``, until it exits."""
        query: dict[str, str] = {}
        if exec_id:
            query["exec_id"] = exec_id
        if follow:
            query["follow"] = "1"
        decoder = msgspec.json.Decoder(LogEntry)
        for line in self.stream_lines("GET", f"/v1/tasks/{_id(container_id)}/logs",
                                      query=query):
            yield decoder.decode(line)

    def attach_task(self, container_id: str, exec_id: str = "", *, stdin: bool = False,
                    start: bool = False) -> Attachment:
        """Open a websocket to a process's stdio; ``start`` starts it once attached.

        Raises:
            MoorageError: The server refused (unknown task...).
            Unavailable: The daemon cannot be reached.
        """
        query = {"exec_id": exec_id, "stdin": "1" if stdin else "",
                 "start": "1" if start else ""}
        return open_attachment(self, f"/v1/tasks/{_id(container_id)}/attach?" + urlencode(
            {k: v for k, v in query.items() if v}))
