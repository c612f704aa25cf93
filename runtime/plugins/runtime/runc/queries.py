"""``TaskTable``: a runtime's tasks, and the calls that read or tune them without changing state.

That is: lookup, wait, pids, metrics, resource limits, terminal size, stdin and logs.

:class:`~.service.RuncRuntime` builds on it with the calls that drive the state machine.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from runtime.api.tasks import ExitStatus, LogEntry, ProcessInfo, Status, TaskMetrics, TaskState
from runtime.core.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.plugins.runtime.runc.attach import connect_attach
from runtime.plugins.runtime.runc.cgroups import read_metrics
from runtime.plugins.runtime.runc.layout import TaskPaths
from runtime.plugins.runtime.runc.logs import follow_log
from runtime.plugins.runtime.runc.oci import OciRuntime
from runtime.plugins.runtime.runc.task import Task

__all__ = ["LIVE", "TaskTable"]

#: Statuses in which the task's processes exist.
LIVE = (Status.CREATED, Status.RUNNING, Status.PAUSED)


class TaskTable:
    """The tasks of one runtime, keyed by ``(namespace, container id)``.

    Args:
        name: The plugin's full name (``runtime.runc``).
        oci: The runtime's command line.
        root: Persistent per-task records (``<root>/<ns>/<id>``).
        state: Bundles (``<state>/<ns>/<id>``).
    """

    def __init__(self, name: str, oci: OciRuntime, root: Path, state: Path) -> None:
        self.name = name
        self.oci = oci
        self.root = root
        self.state_dir = state
        self.tasks: dict[tuple[str, str], Task] = {}
        self._mount_options: frozenset[str] | None = None

    # -- lookup -------------------------------------------------------------------

    async def mount_options(self) -> frozenset[str]:
        """See :meth:`~runtime.plugins.runtime.api.Runtime.mount_options` (asked once)."""
        if self._mount_options is None:
            options = (await self.oci.features()).get("mountOptions")
            self._mount_options = frozenset(
                o for o in options if isinstance(o, str)) if isinstance(options, list) \
                else frozenset()
        return self._mount_options

    def has(self, namespace: str, container_id: str) -> bool:
        """Whether this runtime holds the task."""
        return (namespace, container_id) in self.tasks

    def _get(self, namespace: str, container_id: str) -> Task:
        try:
            return self.tasks[(namespace, container_id)]
        except KeyError:
            raise NotFound(f"task {container_id!r} not found") from None

    def paths(self, namespace: str, container_id: str) -> TaskPaths:
        """The directories of a task."""
        return TaskPaths(self.state_dir, self.root, namespace, container_id)

    async def list_tasks(self, namespace: str) -> list[TaskState]:
        """Every task of ``namespace``, sorted by id."""
        found = [t for (ns, _), t in sorted(self.tasks.items()) if ns == namespace]
        return [t.state(self.name) for t in found]

    async def state(self, namespace: str, container_id: str) -> TaskState:
        """One task's state."""
        return self._get(namespace, container_id).state(self.name)

    # -- queries ----------------------------------------------------------------------

    async def wait(self, namespace: str, container_id: str, exec_id: str = "") -> ExitStatus:
        """Block until the process has exited; its exit status and time."""
        return await self._get(namespace, container_id).process(exec_id).wait()

    async def pids(self, namespace: str, container_id: str) -> list[ProcessInfo]:
        """Processes of the task's cgroup, execs named."""
        task = self._get(namespace, container_id)
        task.require(task.init, "list the processes of", *LIVE)
        execs = {p.record.pid: p.id for p in task.execs.values() if p.record.pid}
        pids = await self.oci.ps(namespace, container_id)
        return [ProcessInfo(pid=pid, exec_id=execs.get(pid, "")) for pid in pids]

    async def metrics(self, namespace: str, container_id: str) -> TaskMetrics:
        """CPU, memory and pids of the task's cgroup."""
        task = self._get(namespace, container_id)
        return await anyio.to_thread.run_sync(read_metrics, container_id, task.cgroups)

    async def update(self, namespace: str, container_id: str, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` to the task's cgroup."""
        task = self._get(namespace, container_id)
        async with task.lock:
            task.require(task.init, "update", *LIVE)
            await self.oci.update(namespace, container_id, resources)

    async def resize(self, namespace: str, container_id: str, width: int, height: int,
                     exec_id: str = "") -> None:
        """Resize a process's terminal through conmon's control fifo."""
        if width <= 0 or height <= 0 or width > 1000 or height > 1000:
            raise InvalidArgument(f"terminal size {width}x{height}: each must be 1..1000")
        process = self._get(namespace, container_id).process(exec_id)
        if not process.record.terminal:
            raise FailedPrecondition(f"process {process.event_id!r} has no terminal")
        if process.status == Status.STOPPED:
            raise FailedPrecondition(f"process {process.event_id!r} has exited")
        message = f"1 {height} {width}\n".encode()

        def write() -> None:
            try:
                fd = os.open(process.paths.ctl, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise FailedPrecondition(
                    f"process {process.event_id!r} has no monitor: {exc.strerror}") from None
            try:
                os.write(fd, message)
            finally:
                os.close(fd)

        await anyio.to_thread.run_sync(write)

    async def close_stdin(self, namespace: str, container_id: str, exec_id: str = "") -> None:
        """Close a process's stdin: conmon closes it when an attached client shuts down."""
        process = self._get(namespace, container_id).process(exec_id)
        if not process.record.stdin:
            raise FailedPrecondition(f"process {process.event_id!r} has no open stdin")
        if process.status == Status.STOPPED:
            return
        connection = await anyio.to_thread.run_sync(connect_attach, process.paths.bundle)
        try:
            connection.close_stdin()
            # conmon acts when it sees the end of the stream; give it that moment.
            await anyio.sleep(0.05)
        finally:
            connection.close()

    def logs(self, namespace: str, container_id: str, exec_id: str = "", *,
             follow: bool = False) -> AsyncIterator[LogEntry]:
        """A process's output; with ``follow``, until it exits."""
        process = self._get(namespace, container_id).process(exec_id)
        return follow_log(process.paths.log, follow=follow,
                          done=lambda: process.exited.is_set())
