"""Route set ``api.archive``: a container's files as tar, out and in (``moorage cp``).

Like Docker's archive API, the daemon does the copying: it alone sees the
container's root (the client may be on another machine, or not root, or in
another mount namespace), and it can resolve paths the way the container sees
them. The root is

* ``/proc/<pid>/root`` while the task lives (created, running or paused): the
  container's own mount tree, so its volumes and binds are there too;
* otherwise its snapshot, mounted for the call under the plugin's state
  directory (the directory of ``--rootfs`` when it has no snapshot).

Paths are resolved inside that root (:mod:`runtime.pkg.archive.inroot`): a
symlink in the container pointing at ``/etc`` means the container's ``/etc``,
and a path climbing above the root is refused (400), before anything is read
or written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio.to_thread

from runtime.api.containers import ArchiveResult, PathStatInfo
from runtime.core.errors import InvalidArgument
from runtime.pkg.http import web
from runtime.pkg.mount import mounted
from runtime.plugins.api.api import Query, Route, RouteSet, namespace_of
from runtime.plugins.tasks.service import TaskService

if TYPE_CHECKING:
    from runtime.pkg.archive.inroot import PathStat

# runtime.pkg.archive.inroot (with tarfile) is imported by the first copy, not at
# daemon start: an idle daemon keeps request-only modules out (test_idle_memory).

__all__ = ["archive_routes", "send_file"]

_LIVE = ("created", "running", "paused")
_CHUNK = 1 << 20
_SPOOL = 8 << 20  # archives up to this size stay in memory


async def send_file(request: web.Request, handle: IO[bytes],
                    headers: dict[str, str]) -> web.StreamResponse:
    """Answer with the rest of ``handle`` (a spooled tar or blob) and ``headers``."""
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    while chunk := handle.read(_CHUNK):
        await response.write(chunk)
    await response.write_eof()
    return response


def archive_routes(service: TaskService, state: Path) -> RouteSet:
    """Routes over the task service (for the task's pid and the container's snapshot).

    Args:
        service: The task service.
        state: The plugin's state directory (mount points of stopped containers' roots).
    """

    @contextlib.asynccontextmanager
    async def root_of(namespace: str, container_id: str) -> AsyncIterator[str]:
        container = await service.containers.get(namespace, container_id)
        if await service.has_task(namespace, container_id):
            task = await service.find(namespace, container_id).state(namespace, container_id)
            if str(task.status) in _LIVE and task.pid:
                yield f"/proc/{task.pid}/root"
                return
        mounts = await service.root_mounts(namespace, container)
        if not mounts:
            path = str((container.spec.get("root") or {}).get("path") or "")
            if not os.path.isabs(path):
                raise InvalidArgument(f"container {container_id!r} has no root filesystem "
                                      "to copy from or to")
            yield path
            return
        state.mkdir(parents=True, exist_ok=True)
        import tempfile  # at the first copy, not at the daemon's start

        where = Path(tempfile.mkdtemp(prefix="cp-", dir=state))
        try:
            async with mounted(mounts, where):
                yield str(where)
        finally:
            with contextlib.suppress(OSError):
                where.rmdir()

    def path_of(request: web.Request) -> str:
        path = request.query.get("path", "")
        if not path:
            raise InvalidArgument("query parameter path is required")
        return path

    def follow(request: web.Request) -> bool:
        return request.query.get("follow", "") in ("1", "true")

    async def stat(request: web.Request) -> PathStatInfo:
        path = path_of(request)
        async with root_of(namespace_of(request), request.match_info["id"]) as root:

            def work() -> PathStat:
                from runtime.pkg.archive import inroot

                fd = inroot.open_root(root)
                try:
                    return inroot.stat_path(fd, path, follow=follow(request))
                finally:
                    os.close(fd)

            found = await anyio.to_thread.run_sync(work)
        return PathStatInfo(name=found.name, mode=found.mode, size=found.size,
                            mtime=found.mtime, link_target=found.link_target,
                            is_dir=found.is_dir)

    async def get(request: web.Request) -> web.StreamResponse:
        path = path_of(request)
        import tempfile

        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 - closed below
        try:
            async with root_of(namespace_of(request), request.match_info["id"]) as root:

                def work() -> None:
                    from runtime.pkg.archive import inroot

                    fd = inroot.open_root(root)
                    try:
                        inroot.write_tar(fd, path, spool, follow=follow(request))
                    finally:
                        os.close(fd)
                    spool.seek(0)

                await anyio.to_thread.run_sync(work)
            return await send_file(request, spool, {"Content-Type": "application/x-tar"})
        finally:
            spool.close()

    async def put(request: web.Request) -> ArchiveResult:
        path = path_of(request)
        import tempfile

        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 - closed below
        try:
            async for chunk in request.content.iter_chunked(_CHUNK):
                spool.write(chunk)
            spool.seek(0)
            async with root_of(namespace_of(request), request.match_info["id"]) as root:

                def work() -> int:
                    from runtime.pkg.archive import inroot

                    fd = inroot.open_root(root)
                    try:
                        return inroot.extract_tar(fd, path, spool)
                    finally:
                        os.close(fd)

                return ArchiveResult(entries=await anyio.to_thread.run_sync(work))
        finally:
            spool.close()

    one = "/v1/containers/{id}/archive"
    path_q = Query("path", "a path inside the container", required=True)
    follow_q = Query("follow", "1: follow a final symlink (inside the container)")
    return [
        Route("GET", one + "/stat", stat, "Stat a path inside the container's root.",
              response=PathStatInfo, query=(path_q, follow_q)),
        Route("GET", one, get, "A path of the container (recursively) as a tar.",
              stream="application/x-tar", query=(path_q, follow_q)),
        Route("PUT", one, put, "Unpack the tar of the request body into a directory of the "
              "container (owners, modes and times as the tar says).",
              response=ArchiveResult, query=(path_q,)),
    ]
