"""The task service: route each task call to the runtime that runs (or will run) the task.

A new task goes to the runtime its container names (``runc`` by default); an
existing one is found in whichever runtime holds it, so a task stays reachable
even if its container record was changed or removed meanwhile.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from runtime.core.errors import AlreadyExists, NotFound
from runtime.plugins.containers.api import Container, ContainerStore
from runtime.plugins.runtime.api import CreateTaskRequest, Runtime, TaskState, runtime_plugin_id
from runtime.plugins.snapshots.api import Mount

__all__ = ["TaskService"]


class TaskService:
    """Dispatch over the running ``runtime.*`` plugins.

    Args:
        containers: The container store.
        runtimes: Running runtimes by plugin id (``runc``, ``crun``).
        snapshots: Returns the snapshot service when it runs (for containers
            whose root filesystem is a snapshot), else ``None``.
    """

    def __init__(self, containers: ContainerStore, runtimes: Mapping[str, Runtime],
                 snapshots: Callable[[], Any] | None = None) -> None:
        self.containers = containers
        self.runtimes = dict(runtimes)
        self._snapshots = snapshots or (lambda: None)

    def runtime_for(self, container: Container) -> Runtime:
        """The runtime a container names; NotFound if it is not running."""
        plugin_id = runtime_plugin_id(container.runtime.name or "runc")
        try:
            return self.runtimes[plugin_id]
        except KeyError:
            running = ", ".join(sorted(f"runtime.{r}" for r in self.runtimes)) or "none"
            raise NotFound(f"runtime {container.runtime.name!r} of container {container.id!r} "
                           f"is not running (running: {running})") from None

    def find(self, namespace: str, container_id: str) -> Runtime:
        """The runtime holding the task; NotFound if none does."""
        for runtime in self.runtimes.values():
            if runtime.has(namespace, container_id):
                return runtime
        raise NotFound(f"task {container_id!r} not found")

    async def create(self, namespace: str, request: CreateTaskRequest) -> TaskState:
        """Create the task of a container on the runtime it names."""
        container = await self.containers.get(namespace, request.container_id)
        for runtime in self.runtimes.values():
            if runtime.has(namespace, container.id):
                raise AlreadyExists(f"task {container.id!r} already exists")
        runtime = self.runtime_for(container)
        spec = copy.deepcopy(container.spec)
        if request.terminal is not None:
            spec.setdefault("process", {})["terminal"] = request.terminal
        rootfs = list(request.rootfs) or await self._snapshot_mounts(namespace, container)
        return await runtime.create(namespace, container.id, spec, rootfs, stdin=request.stdin)

    async def _snapshot_mounts(self, namespace: str, container: Container) -> list[Mount]:
        if not (container.snapshotter and container.snapshot_key):
            return []
        service = self._snapshots()
        if service is None:
            raise NotFound(f"container {container.id!r} has a {container.snapshotter} snapshot "
                           "but the snapshot service is not running")
        mounts = await service.get(container.snapshotter).mounts(namespace,
                                                                container.snapshot_key)
        return [Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
                for m in mounts]

    async def list(self, namespace: str) -> list[TaskState]:
        """Every task of the namespace over all runtimes, sorted by id."""
        found: list[TaskState] = []
        for runtime in self.runtimes.values():
            found.extend(await runtime.list_tasks(namespace))
        return sorted(found, key=lambda t: t.container_id)

    async def has_task(self, namespace: str, container_id: str) -> bool:
        """Whether any runtime holds a task for the container."""
        return any(r.has(namespace, container_id) for r in self.runtimes.values())
