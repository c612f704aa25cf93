"""Registrations of ``volumes.local`` and its route set ``api.volumes``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import route_set

__all__ = ["moorage_plugins"]


async def init(ctx: InitContext[Any]) -> Any:
    """The store, under the plugin's root."""
    from runtime.plugins.volumes.store import VolumeStore

    return VolumeStore(ctx.root, ctx.get("containers.store"))


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """Named volumes and their routes."""
    yield Registration.named("volumes.local", init, requires=("containers.store",),
                             description="named volumes: directories under the root, per namespace")
    yield route_set("volumes", ("volumes.local",), "volumes: create, list, inspect, remove, prune",
                    "runtime.plugins.volumes.routes:volume_routes")
