"""Route set ``api.containers``: ``/v1/containers`` create, get, list, update and delete."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from runtime.api.containers import Container, ContainerCreateRequest, ContainerUpdateRequest
from runtime.core.config import DEFAULT_CGROUP_PARENT
from runtime.core.errors import FailedPrecondition
from runtime.pkg.http import web
from runtime.plugins.api.api import Route, RouteSet, decode_body, list_route, namespace_of
from runtime.plugins.containers.api import ContainerStore, check_privileges, new_container
from runtime.plugins.runtime.api import Runtime

__all__ = ["container_routes"]


def container_routes(store: ContainerStore, runtimes: Callable[[], Mapping[str, Runtime]],
                     cgroup_parent: str = DEFAULT_CGROUP_PARENT) -> RouteSet:
    """Routes over the container store; ``runtimes()`` gives the running runtimes by id.

    Generated specs put containers under ``cgroup_parent`` (the daemon's setting).
    """

    async def list_(request: web.Request) -> list[Container]:
        return await store.list(namespace_of(request), request.query.getall("filter", []))

    async def get(request: web.Request) -> Container:
        return await store.get(namespace_of(request), request.match_info["id"])

    async def create(request: web.Request) -> Container:
        body = await decode_body(request, ContainerCreateRequest)
        ns = namespace_of(request)
        return await store.create(ns, new_container(ns, body, cgroup_parent))

    async def update(request: web.Request) -> Container:
        body = await decode_body(request, ContainerUpdateRequest)
        if body.spec is not None:
            check_privileges(request.match_info["id"], body.spec, body.allow_privileged)
        return await store.update(
            namespace_of(request), request.match_info["id"], labels=body.labels,
            spec=body.spec, image=body.image, snapshot_key=body.snapshot_key,
            extensions=body.extensions,
        )  # fmt: skip

    async def delete(request: web.Request) -> None:
        ns, container_id = namespace_of(request), request.match_info["id"]
        for runtime in runtimes().values():
            if runtime.has(ns, container_id):
                raise FailedPrecondition(
                    f"container {container_id!r} still has a task; delete the task first")
        await store.delete(ns, container_id)

    one = "/v1/containers/{id}"
    return [
        list_route("/v1/containers", list_, "List containers.", list[Container],
                   "filter (id, image, runtime.name, snapshotter, snapshot_key, labels.<k>); "
                   "repeat to OR"),
        Route("POST", "/v1/containers", create,
              "Create a container; the spec is generated unless given.",
              body=ContainerCreateRequest, response=Container, status=201),
        Route("GET", one, get, "One container.", response=Container),
        Route("PATCH", one, update, "Update labels, spec, image, snapshot key or extensions.",
              body=ContainerUpdateRequest, response=Container),
        Route("DELETE", one, delete, "Delete a container without a task."),
    ]
