"""Route set ``api.volumes``: ``/v1/volumes``."""

from __future__ import annotations

from runtime.pkg.http import web
from runtime.plugins.api.api import Route, RouteSet, decode_body, namespace_of
from runtime.plugins.volumes.api import Volume, VolumeCreateRequest, VolumePruneReport
from runtime.plugins.volumes.store import VolumeStore

__all__ = ["volume_routes"]


def volume_routes(store: VolumeStore) -> RouteSet:
    """Create, list, get, delete and prune volumes of the request's namespace."""

    async def list_(request: web.Request) -> list[Volume]:
        return await store.list(namespace_of(request))

    async def create(request: web.Request) -> Volume:
        body = await decode_body(request, VolumeCreateRequest)
        return await store.create(namespace_of(request), body.name, body.labels,
                                  exist_ok=body.exist_ok)

    async def get(request: web.Request) -> Volume:
        return await store.get(namespace_of(request), request.match_info["name"])

    async def delete(request: web.Request) -> None:
        await store.remove(namespace_of(request), request.match_info["name"])

    async def prune(request: web.Request) -> VolumePruneReport:
        return VolumePruneReport(removed=await store.prune(namespace_of(request)))

    one = "/v1/volumes/{name}"
    tags = ("volumes",)
    return [
        Route("GET", "/v1/volumes", list_, "List volumes.", response=list[Volume], tags=tags),
        Route("POST", "/v1/volumes", create, "Create a volume.", body=VolumeCreateRequest,
              response=Volume, status=201, tags=tags),
        Route("POST", "/v1/volumes/prune", prune, "Remove every volume no container mounts.",
              response=VolumePruneReport, tags=tags),
        Route("GET", one, get, "One volume.", response=Volume, tags=tags),
        Route("DELETE", one, delete, "Remove a volume (refused while a container mounts it).",
              tags=tags),
    ]
