"""Route set ``api.leases``: create, list and delete leases and manage their resources."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec

from runtime.api.types import Lease, LeaseCreateRequest, LeaseResource
from runtime.core.errors import InvalidArgument
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, RouteSet, decode_body, list_route, namespace_of
from runtime.plugins.gc.api import Collections
from runtime.plugins.metadata.api import Metadata, Resource

__all__ = ["MAX_EXPIRE", "lease_routes"]

#: The longest lease expiry a request may ask for, in seconds (100 years).
MAX_EXPIRE = 100 * 365.25 * 24 * 3600


def _lease(obj: Any) -> Lease:
    return msgspec.convert(msgspec.to_builtins(obj), Lease)


def lease_routes(
    metadata: Metadata, gc: Callable[[], Collections | None] | None = None
) -> RouteSet:
    """Routes over the metadata plugin's lease store.

    ``gc`` returns the ``gc.scheduler`` service, or None when it is not running:
    ``DELETE ?sync=1`` then waits for a collection, or just deletes without one.
    """
    leases = metadata.leases

    async def list_(request: web.Request) -> list[Lease]:
        found = await leases.list(namespace_of(request), request.query.getall("filter", []))
        return [_lease(lease) for lease in found]

    async def create(request: web.Request) -> Lease:
        body = await decode_body(request, LeaseCreateRequest)
        if body.expire is not None and not body.expire > 0:  # NaN too
            raise InvalidArgument("expire must be a positive number of seconds")
        # Bounded above too: a date past year 9999 does not exist (it was a 500).
        if body.expire is not None and body.expire > MAX_EXPIRE:
            raise InvalidArgument(f"expire must be at most {MAX_EXPIRE:.0f} seconds (100 years)")
        expire = timedelta(seconds=body.expire) if body.expire is not None else None
        return _lease(await leases.create(namespace_of(request), body.id, body.labels, expire))

    async def get(request: web.Request) -> Lease:
        return _lease(await leases.get(namespace_of(request), request.match_info["id"]))

    async def delete(request: web.Request) -> None:
        await leases.delete(namespace_of(request), request.match_info["id"])
        scheduler = gc() if gc is not None else None
        if request.query.get("sync", "") in ("1", "true") and scheduler is not None:
            await scheduler.schedule_and_wait()

    async def resources(request: web.Request) -> list[LeaseResource]:
        found = await leases.resources(namespace_of(request), request.match_info["id"])
        return [LeaseResource(type=r.type, id=r.id) for r in found]

    async def add(request: web.Request) -> None:
        body = await decode_body(request, LeaseResource)
        await leases.add_resource(
            namespace_of(request), request.match_info["id"], Resource(type=body.type, id=body.id)
        )

    async def remove(request: web.Request) -> None:
        body = await decode_body(request, LeaseResource)
        await leases.delete_resource(
            namespace_of(request), request.match_info["id"], Resource(type=body.type, id=body.id)
        )

    one = "/v1/leases/{id}"
    return [
        list_route("/v1/leases", list_, "List leases.", list[Lease],
                   "filter (id, labels.<k>); repeat to OR"),
        Route(
            "POST",
            "/v1/leases",
            create,
            "Create a lease.",
            body=LeaseCreateRequest,
            response=Lease,
            status=201,
        ),
        Route("GET", one, get, "One lease.", response=Lease),
        Route("DELETE", one, delete, "Delete a lease.",
              query=(Query("sync", "1: wait for a garbage collection to free what it held"),)),
        Route(
            "GET",
            one + "/resources",
            resources,
            "What the lease holds.",
            response=list[LeaseResource],
        ),
        Route("POST", one + "/resources", add, "Hold a resource.", body=LeaseResource),
        Route("DELETE", one + "/resources", remove, "Release a resource.", body=LeaseResource),
    ]
