"""Route set ``api.images``: image records, pull and push (NDJSON progress), archives.

Pull and push answer ``application/x-ndjson``: one :data:`~.types.ImageProgress`
line per change (throttled to about ten a second), ending with a ``done`` or
``error`` line. Errors found before the transfer starts (a malformed reference
or platform) are ordinary error responses. A client that disconnects cancels
the transfer; what was downloaded stays in resumable ingests.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from runtime.api.types import (
    CheckResult,
    ImageCreateRequest,
    ImageInfo,
    ImagePullRequest,
    ImagePushRequest,
    ImageRootfs,
    ImageUpdateRequest,
    ImageUsage,
)
from runtime.core.errors import InvalidArgument, MoorageError
from runtime.pkg.http import web
from runtime.plugins.api.api import Query, Route, RouteSet, decode_body, list_route, namespace_of
from runtime.plugins.gc.api import Collections

if TYPE_CHECKING:
    from runtime.plugins.images.progress import Tracker
    from runtime.plugins.images.service import ImageService

__all__ = ["image_routes"]

log = logging.getLogger("moorage.api")

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_NAME = "{name:.+}"


def _conv(obj: Any, type_: type[T]) -> T:
    try:
        return msgspec.convert(msgspec.to_builtins(obj), type_)
    except msgspec.ValidationError as exc:
        # The wire types are looser than the records (a platform without an
        # architecture decodes, but is no Platform): the request is at fault, not us.
        raise InvalidArgument(f"invalid request body: {exc}") from None


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"query parameter {name}={raw!r}: use 1 or 0")


def image_routes(
    service: ImageService, gc: Callable[[], Collections | None] | None = None
) -> RouteSet:
    """Routes over the images service (``images.store``).

    Args:
        service: The images service.
        gc: Returns the running ``gc.scheduler`` (or ``None``), for ``DELETE ?sync=1``.
    """
    from runtime.pkg.registry.reference import parse_reference
    from runtime.pkg.registry.types import Descriptor
    from runtime.plugins.images.api import (
        Done,
        Failed,
        Image,
        PullOptions,
        PushOptions,
    )

    def name_of(request: web.Request) -> str:
        # Accept short names (busybox) the way the CLI does: normalised.
        return parse_reference(request.match_info["name"]).name

    async def stream(
        request: web.Request, tracker: Tracker, run: Callable[[], Awaitable[Image | None]]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def work() -> None:
            try:
                image = await run()
            except MoorageError as exc:
                tracker.finish(Failed(code=exc.code, message=exc.message))
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                tracker.finish(
                    Failed(code="internal", message="internal error; see the daemon log")
                )
            else:
                tracker.finish(
                    Done(
                        image=image,
                        seconds=round(tracker.timings.elapsed(), 3),
                        bytes=tracker.bytes,
                        timings=tracker.timings.summary(),
                    )
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            async for message in tracker.messages():
                await response.write(_encoder.encode(message) + b"\n")
        await response.write_eof()
        return response

    async def list_(request: web.Request) -> list[ImageInfo]:
        images = await service.list(namespace_of(request), request.query.getall("filter", []))
        return [_conv(i, ImageInfo) for i in images]

    async def get(request: web.Request) -> ImageInfo:
        return _conv(await service.get(namespace_of(request), name_of(request)), ImageInfo)

    async def create(request: web.Request) -> ImageInfo:
        body = await decode_body(request, ImageCreateRequest)
        image = Image(
            name=parse_reference(body.name).name,
            target=_conv(body.target, Descriptor),
            labels=body.labels,
        )
        return _conv(await service.create(namespace_of(request), image), ImageInfo)

    async def update(request: web.Request) -> ImageInfo:
        ns, name = namespace_of(request), name_of(request)
        body = await decode_body(request, ImageUpdateRequest)
        current = await service.get(ns, name)
        target = _conv(body.target, Descriptor) if body.target is not None else current.target
        paths = list(body.fieldpaths)
        if not paths:
            paths = [f"labels.{k}" for k in body.labels]
            if body.target is not None:
                paths.append("target")
            if not paths:
                return _conv(current, ImageInfo)
        image = Image(name=name, target=target, labels=body.labels)
        return _conv(await service.update(ns, image, paths), ImageInfo)

    async def delete(request: web.Request) -> None:
        sync = _flag(request, "sync")
        await service.delete(
            namespace_of(request),
            name_of(request),
            sync=sync,
            target=request.query.get("target", ""),
        )
        scheduler = gc() if gc is not None else None
        if sync and scheduler is not None:
            # The collection that frees the image's content, as containerd's SyncDelete.
            await scheduler.schedule_and_wait()

    async def pull(request: web.Request) -> web.StreamResponse:
        ns = namespace_of(request)
        body = await decode_body(request, ImagePullRequest)
        # Imported by the first pull or push, not at the daemon's start.
        from runtime.plugins.images.platforms import parse_platform
        from runtime.plugins.images.progress import Tracker

        ref = parse_reference(body.ref)
        for platform in body.platforms:
            parse_platform(platform)
        opts = PullOptions(
            platforms=body.platforms,
            all_platforms=body.all_platforms,
            snapshotter=body.snapshotter,
            unpack=body.unpack,
            plain_http=body.plain_http,
            hosts_dir=body.hosts_dir,
            username=body.user,
            password=body.password,
            max_concurrent_downloads=body.max_concurrent_downloads,
        )
        tracker = Tracker(
            ref.name,
            "/images/pull/progress",
            lambda topic, event: service.publish(ns, topic, event),
        )
        return await stream(request, tracker, lambda: service.pull(ns, ref.name, opts, tracker))

    async def push(request: web.Request) -> web.StreamResponse:
        from runtime.plugins.images.progress import Tracker

        ns = namespace_of(request)
        body = await decode_body(request, ImagePushRequest)
        name = parse_reference(body.name).name
        target = parse_reference(body.ref or name)
        await service.get(ns, name)
        opts = PushOptions(
            platforms=body.platforms,
            plain_http=body.plain_http,
            hosts_dir=body.hosts_dir,
            username=body.user,
            password=body.password,
        )
        tracker = Tracker(
            target.name,
            "/images/push/progress",
            lambda topic, event: service.publish(ns, topic, event),
        )

        async def run() -> Image:
            await service.push(ns, name, target.name, opts, tracker)
            image: Image = await service.get(ns, name)
            return image

        return await stream(request, tracker, run)

    async def import_(request: web.Request) -> list[ImageInfo]:
        images = await service.import_stream(
            namespace_of(request),
            request.content.iter_chunked(1 << 20),
            base_name=request.query.get("base_name", ""),
            unpack=_flag(request, "unpack", True),
            snapshotter=request.query.get("snapshotter", ""),
        )
        return [_conv(i, ImageInfo) for i in images]

    async def export(request: web.Request) -> web.StreamResponse:
        ns = namespace_of(request)
        names = request.query.getall("name", [])
        chunks = await service.export_archive(
            ns,
            names,
            platforms=request.query.getall("platform", []),
            all_platforms=_flag(request, "all_platforms"),
        )
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def check(request: web.Request) -> CheckResult:
        result = await service.check(
            namespace_of(request), name_of(request), request.query.getall("platform", [])
        )
        return _conv(result, CheckResult)

    async def usage(request: web.Request) -> ImageUsage:
        result = await service.usage(
            namespace_of(request), name_of(request), request.query.get("snapshotter", "")
        )
        return _conv(result, ImageUsage)

    async def rootfs(request: web.Request) -> ImageRootfs:
        ns, name = namespace_of(request), name_of(request)
        snapshotter = request.query.get("snapshotter", "")
        chain, config = await service.image_rootfs(
            ns, name, snapshotter, platform=request.query.get("platform", "")
        )
        return ImageRootfs(
            name=name,
            snapshotter=service.snapshotter(snapshotter).name,
            chain_id=chain,
            config=msgspec.to_builtins(config),
        )

    item = f"/v1/images/{_NAME}"
    platform_q = Query("platform", "os/arch[/variant]; repeat", True)
    # Specific paths first: {name:.+} would match them too.
    return [
        list_route("/v1/images", list_, "List images of the namespace.", list[ImageInfo]),
        Route(
            "POST",
            "/v1/images",
            create,
            "Record an image over stored content.",
            body=ImageCreateRequest,
            response=ImageInfo,
            status=201,
        ),
        Route(
            "POST",
            "/v1/images/pull",
            pull,
            "Pull (and unpack) an image; streams NDJSON progress lines.",
            body=ImagePullRequest,
            stream="application/x-ndjson",
        ),
        Route(
            "POST",
            "/v1/images/push",
            push,
            "Push an image to a registry; streams NDJSON progress lines.",
            body=ImagePushRequest,
            stream="application/x-ndjson",
        ),
        Route(
            "POST",
            "/v1/images/import",
            import_,
            "Import an OCI layout or docker-save tar (request body).",
            response=list[ImageInfo],
            query=(
                Query("base_name", "name prefix for unnamed or tag-only entries"),
                Query("unpack", "0 to skip unpacking"),
                Query("snapshotter", "where to unpack"),
            ),
        ),
        Route(
            "GET",
            "/v1/images/export",
            export,
            "Export images as an OCI layout tar (with Docker manifest.json).",
            stream="application/x-tar",
            query=(
                Query("name", "image to export; repeat", True, required=True),
                platform_q,
                Query("all_platforms", "1 for every platform of an index"),
            ),
        ),
        Route(
            "GET",
            item + "/check",
            check,
            "Whether every blob of the image is present.",
            response=CheckResult,
            query=(platform_q,),
        ),
        Route(
            "GET",
            item + "/usage",
            usage,
            "Disk use of the image's blobs and snapshots.",
            response=ImageUsage,
            query=(Query("snapshotter", "snapshotter"),),
        ),
        Route(
            "GET",
            item + "/rootfs",
            rootfs,
            "Unpack if needed; the top chain ID and the image's run config.",
            response=ImageRootfs,
            query=(Query("snapshotter", "snapshotter"), Query("platform", "os/arch")),
        ),
        Route("GET", item, get, "One image.", response=ImageInfo),
        Route(
            "PATCH",
            item,
            update,
            "Update labels or target.",
            body=ImageUpdateRequest,
            response=ImageInfo,
        ),
        Route(
            "DELETE",
            item,
            delete,
            "Delete an image record.",
            query=(
                Query("sync", "1: wait for garbage collection"),
                Query("target", "only if it still points at this digest"),
            ),
        ),
    ]
