"""Registration of ``containers.store``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import required_services, route_set
from runtime.plugins.containers.api import ContainerStore
from runtime.plugins.containers.store import SqliteContainerStore
from runtime.plugins.metadata.api import Metadata


async def init(ctx: InitContext[Any]) -> ContainerStore:
    """Container records in the metadata plugin's database."""
    metadata: Metadata = ctx.get("metadata.sqlite")
    return SqliteContainerStore(metadata.db, ctx.publish)


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The container store."""
    yield Registration.named(
        "containers.store", init, requires=("metadata.sqlite",),
        description="container records (id, image, runtime, OCI spec, snapshot) per namespace")
    yield route_set(
        "containers", ("containers.store",), "containers",
        "runtime.plugins.containers.routes:container_routes",
        lambda ctx: (*required_services(ctx), lambda: ctx.plugins.by_type("runtime"),
                     ctx.daemon.cgroup_parent),
    )
