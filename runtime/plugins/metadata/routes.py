"""Route set ``api.namespaces``: list, create, label and delete namespaces."""

from __future__ import annotations

import msgspec

from runtime.api.types import Namespace, NamespaceCreateRequest, NamespaceLabelsRequest
from runtime.pkg.http import web
from runtime.plugins.api.api import Route, RouteSet, decode_body
from runtime.plugins.metadata.api import Metadata

__all__ = ["namespace_routes"]


def _info(ns: Namespace) -> Namespace:
    return msgspec.convert(msgspec.to_builtins(ns), Namespace)


def namespace_routes(metadata: Metadata) -> RouteSet:
    """Routes over the metadata plugin's namespace store."""
    store = metadata.namespaces

    async def list_(_: web.Request) -> list[Namespace]:
        return [_info(ns) for ns in await store.list()]

    async def get(request: web.Request) -> Namespace:
        return _info(await store.get(request.match_info["name"]))

    async def create(request: web.Request) -> Namespace:
        body = await decode_body(request, NamespaceCreateRequest)
        return _info(await store.create(body.name, body.labels))

    async def label(request: web.Request) -> Namespace:
        body = await decode_body(request, NamespaceLabelsRequest)
        return _info(await store.update_labels(request.match_info["name"], body.labels))

    async def delete(request: web.Request) -> None:
        await store.delete(request.match_info["name"])

    return [
        Route("GET", "/v1/namespaces", list_, "List namespaces.", response=list[Namespace]),
        Route(
            "POST",
            "/v1/namespaces",
            create,
            "Create a namespace.",
            body=NamespaceCreateRequest,
            response=Namespace,
            status=201,
        ),
        Route("GET", "/v1/namespaces/{name}", get, "One namespace.", response=Namespace),
        Route(
            "PATCH",
            "/v1/namespaces/{name}",
            label,
            "Set labels (an empty value removes one).",
            body=NamespaceLabelsRequest,
            response=Namespace,
        ),
        Route(
            "DELETE",
            "/v1/namespaces/{name}",
            delete,
            "Delete an empty namespace (412 names what it still holds).",
        ),
    ]
