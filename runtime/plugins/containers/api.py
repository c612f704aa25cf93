"""The container store's contract: the record, its events and the service protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from runtime.api.containers import (
    Container,
    ContainerCreate,
    ContainerCreateRequest,
    ContainerDelete,
    ContainerUpdate,
    ContainerUpdateRequest,
    RunRequest,
    RuntimeInfo,
)

__all__ = [
    "Container",
    "ContainerCreate",
    "ContainerCreateRequest",
    "ContainerDelete",
    "ContainerStore",
    "ContainerUpdate",
    "ContainerUpdateRequest",
    "RunRequest",
    "RuntimeInfo",
]



class ContainerStore(Protocol):
    """What ``containers.store`` provides to other plugins."""

    async def create(self, namespace: str, container: Container) -> Container:
        """Store a new record; AlreadyExists if the id is taken."""
        ...

    async def get(self, namespace: str, id: str) -> Container:
        """One record; NotFound if absent."""
        ...

    async def list(self, namespace: str, filters: list[str] | None = None) -> list[Container]:
        """Records matching any of ``filters`` (none: all), sorted by id."""
        ...

    async def update(
        self,
        namespace: str,
        id: str,
        *,
        labels: Mapping[str, str] | None = None,
        spec: dict[str, Any] | None = None,
        image: str | None = None,
        snapshot_key: str | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> Container:
        """Change the mutable fields given; labels merge (an empty value removes one)."""
        ...

    async def delete(self, namespace: str, id: str) -> None:
        """Remove a record; NotFound if absent."""
        ...
