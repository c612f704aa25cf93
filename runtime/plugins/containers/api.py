"""The container store's contract: the service protocol, and building a record from a request.

The record, its request bodies and its events are wire types, in :mod:`runtime.api.containers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from runtime.api.containers import (
    Container,
    ContainerCreateRequest,
)
from runtime.core.config import DEFAULT_CGROUP_PARENT
from runtime.core.errors import PermissionDenied
from runtime.core.identifiers import validate_identifier

__all__ = ["ContainerStore", "check_privileges", "new_container"]



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
        durable: bool = True,
    ) -> Container:
        """Change the mutable fields given; labels merge (an empty value removes one).

        ``durable=False``: the change survives a crash of the daemon, not
        necessarily a power loss (for state that a reboot ends anyway).
        """
        ...

    async def delete(self, namespace: str, id: str) -> None:
        """Remove a record; NotFound if absent."""
        ...


def check_privileges(container_id: str, spec: dict[str, Any], allowed: bool) -> None:
    """Refuse a spec that reaches past the container unless the request allows it.

    Raises:
        PermissionDenied: Naming what the spec asks for and how to allow it.
    """
    from runtime.plugins.containers.privileges import privileged_reasons

    reasons = privileged_reasons(spec)
    if reasons and not allowed:
        raise PermissionDenied(
            f"container {container_id!r} asks for {'; '.join(reasons)}: set "
            "allow_privileged in the request (moorage run --privileged) to allow it"
        )


def new_container(namespace: str, body: ContainerCreateRequest,
                  cgroup_parent: str = DEFAULT_CGROUP_PARENT) -> Container:
    """The record ``body`` asks for; its spec is generated unless given.

    A generated spec puts the container's cgroup under ``cgroup_parent``.
    """
    validate_identifier(body.id, "container id")
    spec = body.spec
    if spec is None:
        # The spec module is pure data manipulation: no runtime needs to run for it.
        from runtime.pkg.oci.spec import generate_spec

        spec = generate_spec(namespace, body.id, body.image_config, body.spec_options,
                             cgroup_parent=cgroup_parent)
    check_privileges(body.id, spec, body.allow_privileged)
    return Container(
        id=body.id, image=body.image, runtime=body.runtime, spec=spec,
        snapshotter=body.snapshotter, snapshot_key=body.snapshot_key, labels=body.labels,
        extensions=body.extensions,
    )  # fmt: skip
