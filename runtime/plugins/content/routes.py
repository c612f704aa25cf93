"""Route set ``api.content``: blobs, labels, ranged reads and resumable ingests."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from runtime.api.types import (
    LEASE_HEADER,
    CommitRequest,
    ContentInfo,
    IngestStatus,
    LabelsRequest,
)
from runtime.core.errors import InvalidArgument, OutOfRange
from runtime.core.identifiers import validate_labels
from runtime.pkg.http import web
from runtime.plugins.api.api import (
    Query,
    Route,
    RouteSet,
    decode_body,
    error_response,
    list_route,
    namespace_of,
)

if TYPE_CHECKING:
    from runtime.plugins.content.local.service import ContentService

T = TypeVar("T")

__all__ = ["content_routes"]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")
_CHUNK = 1 << 20


def _conv(obj: Any, type_: type[T]) -> T:
    return msgspec.convert(msgspec.to_builtins(obj), type_)


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"query parameter {name}={raw!r} is not an integer") from None
    if value < 0:
        raise InvalidArgument(f"query parameter {name} must not be negative")
    return value


def _labels(request: web.Request) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in request.query.getall("label", []):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"query parameter label={pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _lease(request: web.Request) -> str | None:
    return request.headers.get(LEASE_HEADER) or None


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` (one range) into ``(offset, length)``, as RFC 9110 section 14.

    Returns ``None`` when the answer is the whole blob: a suffix range of an empty
    blob is satisfiable, but no ``Content-Range`` can describe zero bytes.

    Raises:
        InvalidArgument: Not a single ``bytes`` range.
        OutOfRange: Unsatisfiable: starts at or past the end, ends before it
            starts, or asks for a suffix of zero bytes.
    """
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise InvalidArgument(f"unsupported Range {header!r}: use bytes=START-END")
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise OutOfRange(f"range {header!r} is outside the blob of {size} bytes")
        if size == 0:
            return None
        length = min(suffix, size)
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise OutOfRange(f"range {header!r} is outside the blob of {size} bytes")
    return start, end - start + 1


def content_routes(content: ContentService) -> RouteSet:
    """Routes over the content service."""

    async def list_(request: web.Request) -> list[ContentInfo]:
        infos = await content.list(namespace_of(request), request.query.getall("filter", []))
        return [_conv(i, ContentInfo) for i in infos]

    async def info(request: web.Request) -> ContentInfo:
        return _conv(
            await content.info(namespace_of(request), request.match_info["digest"]), ContentInfo
        )

    async def label(request: web.Request) -> ContentInfo:
        body = await decode_body(request, LabelsRequest)
        updated = await content.update_labels(
            namespace_of(request), request.match_info["digest"], body.labels
        )
        return _conv(updated, ContentInfo)

    async def delete(request: web.Request) -> None:
        await content.delete(namespace_of(request), request.match_info["digest"])

    async def blob(request: web.Request) -> web.StreamResponse:
        ns, digest = namespace_of(request), request.match_info["digest"]
        size = (await content.info(ns, digest)).size
        offset, length, status = 0, size, 200
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Docker-Content-Digest": digest,
        }
        if "Range" in request.headers:
            try:
                ranged = parse_range(request.headers["Range"], size)
            except OutOfRange as exc:
                # RFC 9110: a 416 gives the blob's size, so the client can ask again.
                answer = error_response(exc.http_status, exc.code, exc.message)
                answer.headers["Content-Range"] = f"bytes */{size}"
                return answer
            if ranged is not None:
                offset, length = ranged
                status = 206
                headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
        chunks = await content.read(ns, digest, offset, length)
        try:
            # The blob is opened at the first chunk: a blob removed since the look-up
            # above is still a 404, not a response cut off after its headers.
            first = await anext(chunks, b"")
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = length
            await response.prepare(request)
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        finally:
            await chunks.aclose()
        return response

    async def ingests(request: web.Request) -> list[IngestStatus]:
        return [_conv(s, IngestStatus) for s in await content.list_statuses(namespace_of(request))]

    async def status(request: web.Request) -> IngestStatus:
        return _conv(
            await content.status(namespace_of(request), request.match_info["ref"]), IngestStatus
        )

    async def write(request: web.Request) -> Any:
        ns, ref = namespace_of(request), request.match_info["ref"]
        expected = request.query.get("expected") or None
        offset, total, size = _int(request, "offset"), _int(request, "total"), _int(request, "size")
        commit = request.query.get("commit") in ("1", "true")
        # What the request itself gets wrong is refused before a byte is written.
        labels = validate_labels(_labels(request)) if commit else {}
        writer = await content.open_writer(
            ns, ref, total=total, expected=expected, lease=_lease(request)
        )
        try:
            first = True
            async for chunk in request.content.iter_chunked(_CHUNK):
                await writer.write(chunk, offset if first else None)
                first = False
            if first and offset is not None:
                # An empty body still checks (or resets, at 0) the offset.
                await writer.write(b"", offset)
            if commit:
                info = await writer.commit(size, expected, labels)
                return web.json_response(msgspec.to_builtins(_conv(info, ContentInfo)), status=201)
            return _conv(writer.status(), IngestStatus)
        finally:
            # The ingest stays for a resume; a no-op after a commit, failed or not.
            await writer.close()

    async def commit(request: web.Request) -> ContentInfo:
        ns, ref = namespace_of(request), request.match_info["ref"]
        body = await decode_body(request, CommitRequest)
        # Committing an unknown ref would otherwise open, and publish, an empty ingest.
        await content.status(ns, ref)
        writer = await content.open_writer(ns, ref, lease=_lease(request))
        try:
            info = await writer.commit(body.size, body.expected, body.labels)
        except BaseException:
            await writer.close()
            raise
        return _conv(info, ContentInfo)

    async def abort(request: web.Request) -> None:
        await content.abort(namespace_of(request), request.match_info["ref"])

    digest = "/v1/content/{digest:sha256:[0-9a-f]{64}}"
    ref = "/v1/content/ingests/{ref:.+}"
    return [
        list_route("/v1/content", list_, "List blobs of the namespace.", list[ContentInfo]),
        Route(
            "GET",
            "/v1/content/ingests",
            ingests,
            "Uploads in progress.",
            response=list[IngestStatus],
        ),
        Route("GET", ref, status, "State of one upload.", response=IngestStatus),
        Route(
            "PUT",
            ref,
            write,
            "Write the body at `offset` (resumes; 0 restarts). With commit=1, verify and "
            "publish at the end (201 with ContentInfo).",
            response=IngestStatus,
            query=(
                Query("offset", "where the body starts"),
                Query("total", "announced size"),
                Query("expected", "announced digest"),
                Query("commit", "1 to commit after writing"),
                Query("size", "size to verify at commit"),
                Query("label", "KEY=VALUE label at commit", True),
            ),
        ),
        Route(
            "POST",
            ref,
            commit,
            "Verify size and digest and publish the blob.",
            body=CommitRequest,
            response=ContentInfo,
            status=201,
        ),
        Route("DELETE", ref, abort, "Abort an upload."),
        Route("GET", digest, info, "One blob.", response=ContentInfo),
        Route(
            "PATCH",
            digest,
            label,
            "Set labels (an empty value removes one).",
            body=LabelsRequest,
            response=ContentInfo,
        ),
        Route(
            "DELETE",
            digest,
            delete,
            "Remove the blob from the namespace (from disk once unreferenced).",
        ),
        Route(
            "GET",
            digest + "/blob",
            blob,
            "The blob's bytes; honours Range.",
            stream="application/octet-stream",
        ),
    ]
