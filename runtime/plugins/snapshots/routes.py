"""Route set ``api.snapshots``: ``/v1/snapshots/{snapshotter}/...``."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from runtime.api.types import (
    LEASE_HEADER,
    LabelsRequest,
    Mount,
    SnapshotCommitRequest,
    SnapshotCreateRequest,
    SnapshotInfo,
    Usage,
)
from runtime.core.errors import InvalidArgument
from runtime.pkg.http import web
from runtime.plugins.api.api import Route, RouteSet, decode_body, list_route, namespace_of
from runtime.plugins.snapshots.api import NamespacedSnapshots, Snapshots

T = TypeVar("T")

__all__ = ["snapshot_routes"]


def _conv(obj: Any, type_: type[T]) -> T:
    return msgspec.convert(msgspec.to_builtins(obj), type_)


def snapshot_routes(service: Snapshots) -> RouteSet:
    """Routes over the snapshot service."""

    def sn(request: web.Request) -> NamespacedSnapshots:
        return service.get(request.match_info["snapshotter"])

    def key(request: web.Request) -> str:
        return request.match_info["key"]

    async def walk(request: web.Request) -> list[SnapshotInfo]:
        infos = await sn(request).walk(namespace_of(request), *request.query.getall("filter", []))
        return [_conv(i, SnapshotInfo) for i in infos]

    async def create(request: web.Request) -> list[Mount]:
        body = await decode_body(request, SnapshotCreateRequest)
        lease = request.headers.get(LEASE_HEADER) or None
        if body.kind not in ("active", "view"):
            raise InvalidArgument(f"kind {body.kind!r}: use active or view")
        make = sn(request).prepare if body.kind == "active" else sn(request).view
        mounts = await make(namespace_of(request), body.key, body.parent, body.labels, lease)
        return [_conv(m, Mount) for m in mounts]

    async def stat(request: web.Request) -> SnapshotInfo:
        return _conv(await sn(request).stat(namespace_of(request), key(request)), SnapshotInfo)

    async def label(request: web.Request) -> SnapshotInfo:
        body = await decode_body(request, LabelsRequest)
        info = await sn(request).update(namespace_of(request), key(request), body.labels)
        return _conv(info, SnapshotInfo)

    async def remove(request: web.Request) -> None:
        await sn(request).remove(namespace_of(request), key(request))

    async def mounts(request: web.Request) -> list[Mount]:
        found = await sn(request).mounts(namespace_of(request), key(request))
        return [_conv(m, Mount) for m in found]

    async def usage(request: web.Request) -> Usage:
        return _conv(await sn(request).usage(namespace_of(request), key(request)), Usage)

    async def commit(request: web.Request) -> None:
        body = await decode_body(request, SnapshotCommitRequest)
        lease = request.headers.get(LEASE_HEADER) or None
        await sn(request).commit(namespace_of(request), body.name, key(request), body.labels, lease)

    base = "/v1/snapshots/{snapshotter}"
    # Keys may hold slashes; the action routes are declared first so they win.
    one = base + "/{key:.+}"
    return [
        list_route(base, walk, "Snapshots of the namespace.", list[SnapshotInfo],
                   "filter (kind, name, parent, labels.<k>)"),
        Route(
            "POST",
            base,
            create,
            "Prepare an active snapshot or a view; returns mounts.",
            body=SnapshotCreateRequest,
            response=list[Mount],
            status=201,
        ),
        Route(
            "GET",
            base + "/{key:.+}/mounts",
            mounts,
            "Mounts of an active snapshot or view.",
            response=list[Mount],
        ),
        Route(
            "GET",
            base + "/{key:.+}/usage",
            usage,
            "Disk usage of the snapshot itself.",
            response=Usage,
        ),
        Route(
            "POST",
            base + "/{key:.+}/commit",
            commit,
            "Commit an active snapshot.",
            body=SnapshotCommitRequest,
        ),
        Route("GET", one, stat, "One snapshot.", response=SnapshotInfo),
        Route(
            "PATCH",
            one,
            label,
            "Set labels (an empty value removes one).",
            body=LabelsRequest,
            response=SnapshotInfo,
        ),
        Route("DELETE", one, remove, "Remove a snapshot without children."),
    ]
