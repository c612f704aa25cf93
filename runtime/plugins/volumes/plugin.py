"""Registrations of ``volumes.local`` and its route set ``api.volumes``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration

__all__ = ["moorage_plugins"]


async def init(ctx: InitContext[Any]) -> Any:
    """The store, under the plugin's root."""
    from runtime.plugins.volumes.store import VolumeStore

    return VolumeStore(ctx.root, ctx.get("containers.store"))


async def init_routes(ctx: InitContext[Any]) -> Any:
    """``/v1/volumes``."""
    from runtime.plugins.volumes.routes import volume_routes

    return volume_routes(ctx.get("volumes.local"))


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """Named volumes and their routes."""
    yield Registration(
        type="volumes",
        id="local",
        init=init,
        requires=("containers.store",),
        description="named volumes: directories under the root, per namespace",
    )
    yield Registration(
        type="api",
        id="volumes",
        init=init_routes,
        requires=("volumes.local",),
        description="volumes: create, list, inspect, remove, prune",
    )
