"""Route set ``api.changes``: a container's changes to its image, as one layer blob (``commit``).

``GET /v1/containers/{id}/changes`` compares the container's active snapshot
with its parent through the differ (:class:`~runtime.plugins.diff.api.Comparer`)
and streams the compressed layer; the headers carry its digest, diffID and
media type, which the client needs for the image it builds (``moorage commit``
adds the blob to the content store under a lease, then a config and a
manifest). The container should be paused or stopped meanwhile: the CLI
pauses a running one, as Docker does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from runtime.api.containers import (
    LAYER_DIFF_ID_HEADER,
    LAYER_DIGEST_HEADER,
    LAYER_MEDIA_TYPE_HEADER,
)
from runtime.core.errors import FailedPrecondition, InvalidArgument
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, RouteSet, namespace_of
from runtime.plugins.diff.api import Applier, Comparer
from runtime.plugins.snapshots.api import Snapshots
from runtime.plugins.tasks.archive_routes import send_file
from runtime.plugins.tasks.service import TaskService

__all__ = ["changes_routes"]
_COMPRESSIONS = ("gzip", "zstd", "none")


def changes_routes(service: TaskService, differ: Applier,
                   snapshots: Callable[[], Snapshots | None]) -> RouteSet:
    """Routes over the task service's containers, the differ and the snapshot service.

    Args:
        service: The task service (container records).
        differ: The ``diff.*`` plugin; must be a :class:`Comparer`.
        snapshots: Returns the snapshot service.
    """
    # Asked once, when the routes are built: only a differ that can compare serves them.
    comparer = differ if isinstance(differ, Comparer) else None

    async def changes(request: web.Request) -> web.StreamResponse:
        ns, container_id = namespace_of(request), request.match_info["id"]
        compression = request.query.get("compression", "gzip")
        if compression not in _COMPRESSIONS:
            raise InvalidArgument(f"compression {compression!r}: use gzip, zstd or none")
        if comparer is None:
            raise FailedPrecondition("the differ cannot compare snapshots")
        container = await service.containers.get(ns, container_id)
        if not (container.snapshotter and container.snapshot_key):
            raise FailedPrecondition(f"container {container_id!r} has no snapshot (it runs a "
                                     "--rootfs directory): it has no changes to an image")
        snapshot_service = snapshots()
        if snapshot_service is None:
            raise FailedPrecondition("the snapshot service is not running")
        snapshotter = snapshot_service.get(container.snapshotter)
        key = container.snapshot_key
        upper = await snapshotter.mounts(ns, key)
        parent = (await snapshotter.stat(ns, key)).parent
        view = f"changes-{container_id}-{os.urandom(4).hex()}"
        lower = await snapshotter.view(ns, view, parent) if parent else []
        import tempfile  # at the first changes request, not at the daemon's start

        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        try:
            try:
                layer = await comparer.compare(lower, upper, spool, compression=compression)
            finally:
                if parent:
                    await snapshotter.remove(ns, view)
            spool.seek(0)
            return await send_file(request, spool, {
                "Content-Type": "application/octet-stream", "Content-Length": str(layer.size),
                LAYER_DIGEST_HEADER: layer.digest, LAYER_DIFF_ID_HEADER: layer.diff_id,
                LAYER_MEDIA_TYPE_HEADER: layer.media_type})
        finally:
            spool.close()

    return [
        Route("GET", "/v1/containers/{id}/changes", changes,
              "The container's changes to its image as a layer blob (digest, diffID and "
              "media type in the Moorage-Layer-* headers).",
              stream="application/octet-stream",
              query=(Query("compression", "gzip (default), zstd or none"),)),
    ]
