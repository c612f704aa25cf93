"""The contract of ``service.tasks``: what other plugins may ask of the task service."""

from __future__ import annotations

from typing import Protocol

from runtime.api.tasks import CreateTaskRequest, ExitStatus, TaskState
from runtime.plugins.containers.api import ContainerStore
from runtime.plugins.runtime.api import Runtime

__all__ = ["Tasks"]


class Tasks(Protocol):
    """Tasks of containers, each on the runtime its container names."""

    containers: ContainerStore

    def find(self, namespace: str, container_id: str) -> Runtime:
        """The runtime holding the container's task; NotFound when it has none."""
        ...

    async def create(self, namespace: str, request: CreateTaskRequest) -> TaskState:
        """Create the task of ``request.container_id`` (not started)."""
        ...

    async def remove(self, namespace: str, container_id: str, *, force: bool = False,
                     snapshot: bool = False) -> None:
        """Delete a container (``force``: its task too; ``snapshot``: its snapshot too)."""
        ...

    async def delete_task(self, namespace: str, container_id: str, *,
                          force: bool = False) -> ExitStatus:
        """Delete the container's task (``force``: kill it first)."""
        ...
