"""A task: its record, its processes, and the locks that order what happens to it.

Two locks, because they guard different things: :attr:`Task.lock` serializes
user operations (start, pause, delete...), :attr:`Task.order` is held only
around a state change and the event announcing it. A process exit takes
``order`` alone, so an operation that waits for an exit (delete of a created
task) can hold ``lock`` without deadlocking, while ``/tasks/exit`` can never
overtake the ``/tasks/start`` of the same process.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from runtime.api.tasks import Status, TaskState
from runtime.core.errors import FailedPrecondition, NotFound
from runtime.plugins.runtime.runc.cgroups import CgroupPaths, find_paths
from runtime.plugins.runtime.runc.layout import TaskPaths, TaskRecord, write_record
from runtime.plugins.runtime.runc.process import Process

__all__ = ["Task"]


class Task:
    """One task of a runtime.

    Args:
        record: The persisted task record.
        paths: Its bundle and record directories.
    """

    def __init__(self, record: TaskRecord, paths: TaskPaths) -> None:
        self.record = record
        self.paths = paths
        self.init = Process(record.container_id, record.init, paths.init)
        self.execs: dict[str, Process] = {}
        self.lock = anyio.Lock()
        self.order = anyio.Lock()
        self._cgroups: CgroupPaths | None = None

    @property
    def namespace(self) -> str:
        """The task's namespace."""
        return self.record.namespace

    @property
    def id(self) -> str:
        """The task's (container's) id."""
        return self.record.container_id

    @property
    def status(self) -> Status:
        """The task's status: its init process's."""
        return self.init.status

    @property
    def cgroups(self) -> CgroupPaths:
        """Where the task's cgroup lives (looked up once)."""
        if self._cgroups is None:
            self._cgroups = find_paths(self.record.cgroups_path)
        return self._cgroups

    def processes(self) -> list[Process]:
        """The init process, then the execs."""
        return [self.init, *self.execs.values()]

    def process(self, exec_id: str = "") -> Process:
        """The init process (``exec_id == ""``) or an exec; NotFound otherwise."""
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id!r} not found in task {self.id!r}") from None

    def require(self, process: Process, action: str, *allowed: Status) -> None:
        """Raise FailedPrecondition unless ``process`` is in one of ``allowed``."""
        if process.status not in allowed:
            what = f"exec {process.id!r} of task {self.id!r}" if process.id else f"task {self.id!r}"
            raise FailedPrecondition(f"cannot {action} {what}: it is {process.status}")

    def spec(self) -> dict[str, Any]:
        """The bundle's ``config.json`` (blocking)."""
        spec: dict[str, Any] = json.loads(self.paths.config.read_bytes())
        return spec

    def save(self) -> None:
        """Persist ``task.json`` (blocking; not synced: the task dies with the host)."""
        write_record(self.paths.task_file, self.record, sync=False)

    def save_exec(self, process: Process) -> None:
        """Persist an exec's ``exec.json`` (blocking; not synced, as :meth:`save`)."""
        write_record(self.paths.exec_file(process.id), process.record, sync=False)

    def state(self, runtime: str) -> TaskState:
        """The public view of the task."""
        init = self.init.state()
        return TaskState(
            container_id=self.id, id="", pid=init.pid, status=init.status,
            terminal=init.terminal, stdin=init.stdin, exit_status=init.exit_status,
            exited_at=init.exited_at, runtime=runtime, bundle=str(self.paths.bundle),
            created_at=self.record.created_at,
            execs=[p.state() for p in self.execs.values()],
        )  # fmt: skip
