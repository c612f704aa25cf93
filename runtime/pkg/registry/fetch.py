"""Reading from a registry: resolve a tag, fetch manifests, stream blobs with resumption.

``resolve`` tries the hosts with the ``resolve`` capability, ``fetch_*`` those
with ``pull`` (see :class:`~.transport.RegistryTransport`). A blob streams through
:class:`BlobStream`, which resumes a broken download with a ranged request.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Self, final

import aiohttp

from runtime.core.closing import AsyncClosing
from runtime.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from runtime.pkg.digest import validate_digest
from runtime.pkg.registry.hosts import HostConfig
from runtime.pkg.registry.reference import Reference
from runtime.pkg.registry.retry import Retrying
from runtime.pkg.registry.transport import (
    BLOB_CHUNK_SIZE,
    RegistryTransport,
    check_media_type,
    content_length,
    header_digest,
    media_type,
    read_limited,
    scope,
    sha256,
)
from runtime.pkg.registry.types import (
    ACCEPT_MANIFESTS,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
)

__all__ = ["BlobStream", "RegistryFetcher"]

log = logging.getLogger("moorage.registry")


class RegistryFetcher(RegistryTransport):
    """Resolve, manifest and blob reads over the transport."""


    async def resolve(self, ref: Reference) -> tuple[Descriptor, str]:
        """Find the manifest or index that ``ref`` names.

        Sends HEAD with the manifest media types in ``Accept`` and takes digest,
        media type and size from the headers; when HEAD fails or lacks them,
        GETs the document (at most :data:`MAX_MANIFEST_SIZE`) and hashes it.

        Returns:
            The descriptor and the URL of the host that answered.

        Raises:
            NotFound: No host knows the tag or digest.
            InvalidArgument: A schema 1 manifest, another unsupported media type,
                or a document over the size limit.
            FailedPrecondition: The registry served content that does not match
                a digest reference.
            Unauthenticated: Credentials are missing or refused.
            PermissionDenied: The registry forbids access.
            Unavailable: No host could be reached.
        """

        async def on(host: HostConfig) -> tuple[Descriptor, str]:
            desc = await self._resolve_on(host, ref)
            log.info(
                "resolved %s to %s (%s) via %s", ref.name, desc.digest, desc.mediaType, host.url
            )
            return desc, host.url

        return await self._try_hosts(self.hosts(ref, "resolve"), on, what=f"resolve {ref.name}")

    async def _resolve_on(self, host: HostConfig, ref: Reference) -> Descriptor:
        url = self._url(host, ref, "manifests", ref.object)
        scopes = [scope(ref.path, "pull")]
        accept = {"Accept": ACCEPT_MANIFESTS}
        resp = await self._send(host, "HEAD", url, scopes, headers=accept)
        async with resp:
            if resp.status == 404:
                raise NotFound(f"{ref.name} not found on {host.url}")
            if resp.status in (401, 403):
                await self._raise_for_status(resp, f"manifest {ref.name}", host)
            if resp.status < 300:
                media = media_type(resp.headers.get("Content-Type", ""))
                if media in SCHEMA1_MEDIA_TYPES:
                    check_media_type(media, ref, host)
                digest, size = header_digest(resp), content_length(resp)
                if ref.digest and digest and digest != ref.digest:
                    raise FailedPrecondition(f"{host.url} answered {ref.name} with digest {digest}")
                digest = ref.digest or digest
                if (
                    digest
                    and size is not None
                    and media in INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES
                ):
                    if size > MAX_MANIFEST_SIZE:
                        raise InvalidArgument(
                            f"{ref.name} on {host.url} is {size} bytes, over the "
                            f"{MAX_MANIFEST_SIZE}-byte manifest limit"
                        )
                    return Descriptor(mediaType=media, digest=digest, size=size)
            log.debug("HEAD %s gave %s without digest/type/size; using GET", url, resp.status)

        resp = await self._send(host, "GET", url, scopes, headers=accept)
        async with resp:
            await self._raise_for_status(resp, f"manifest {ref.name}", host)
            content_type = resp.headers.get("Content-Type", "")
            with self._translate(host.netloc):
                body = await read_limited(resp, MAX_MANIFEST_SIZE)
        if len(body) > MAX_MANIFEST_SIZE:
            raise InvalidArgument(
                f"{ref.name} on {host.url} is over the {MAX_MANIFEST_SIZE}-byte manifest limit"
            )
        media = media_type(content_type, body)
        check_media_type(media, ref, host)
        digest = sha256(body)
        if ref.digest and digest != ref.digest:
            raise FailedPrecondition(
                f"{host.url} served {ref.name} with content hashing to {digest}"
            )
        return Descriptor(mediaType=media, digest=digest, size=len(body))

    async def fetch_manifest(self, ref: Reference, desc: Descriptor) -> bytes:
        """Download the manifest or index ``desc`` and verify it.

        Raises:
            InvalidArgument: ``desc`` is a schema 1 type, has a bad digest, or is
                over :data:`MAX_MANIFEST_SIZE`.
            FailedPrecondition: Every host sent content of the wrong size or digest.
            NotFound: No host has it.
        """
        validate_digest(desc.digest)
        if desc.mediaType in SCHEMA1_MEDIA_TYPES:
            raise InvalidArgument(f"schema 1 manifests are not supported: {desc.digest}")
        if desc.size > MAX_MANIFEST_SIZE:
            raise InvalidArgument(
                f"manifest {desc.digest} is {desc.size} bytes, over the "
                f"{MAX_MANIFEST_SIZE}-byte limit"
            )
        scopes = [scope(ref.path, "pull")]
        accept = {"Accept": f"{desc.mediaType}, {ACCEPT_MANIFESTS}"}

        async def on(host: HostConfig) -> bytes:
            url = self._url(host, ref, "manifests", desc.digest)
            resp = await self._send(host, "GET", url, scopes, headers=accept)
            async with resp:
                await self._raise_for_status(resp, f"manifest {ref.repository}@{desc.digest}", host)
                with self._translate(host.netloc):
                    data = await read_limited(resp, desc.size)
            actual = sha256(data)
            if len(data) != desc.size or actual != desc.digest:
                raise FailedPrecondition(
                    f"manifest {ref.repository}@{desc.digest} from {host.url}: expected "
                    f"{desc.size} bytes with digest {desc.digest}, got "
                    + ("more bytes" if len(data) > desc.size else f"{len(data)} bytes, {actual}")
                )
            log.info("fetched manifest %s@%s from %s", ref.repository, desc.digest, host.url)
            return data

        return await self._try_hosts(
            self.hosts(ref, "pull"), on, what=f"manifest {ref.repository}@{desc.digest}")

    def fetch_blob(self, ref: Reference, desc: Descriptor, *, offset: int = 0) -> BlobStream:
        """Stream the blob ``desc`` from byte ``offset`` on; see :class:`BlobStream`.

        The stream checks sizes, not the digest: the caller hashes what it stores.
        """
        return BlobStream(self, ref, desc, offset=offset)

    async def fetch_blob_verified(self, ref: Reference, desc: Descriptor) -> bytes:
        """Download a small blob (a config) whole and check size and digest.

        Raises:
            FailedPrecondition: The content does not match ``desc``.
        """
        hasher = hashlib.sha256()
        data = bytearray()
        async with self.fetch_blob(ref, desc) as stream:
            async for chunk in stream:
                hasher.update(chunk)
                data += chunk
        actual = "sha256:" + hasher.hexdigest()
        if len(data) != desc.size or actual != desc.digest:
            raise FailedPrecondition(
                f"blob {ref.repository}@{desc.digest} from {stream.host}: expected "
                f"{desc.size} bytes with digest {desc.digest}, got {len(data)} bytes with {actual}"
            )
        return bytes(data)



@final
class BlobStream(AsyncClosing):
    """The bytes of one blob, as an async context manager and async iterator.

    Yields chunks of about :data:`BLOB_CHUNK_SIZE`. When the connection breaks
    (or ends early) it asks again with ``Range: bytes=<received>-``, up to the
    client's ``retries`` times, starting with the host that was serving; a
    server that ignores ``Range`` has the already-received prefix skipped.

    Attributes:
        host: URL of the host currently serving the blob (``""`` before opening).

    Raises:
        FailedPrecondition: The server sends more than ``desc.size`` bytes (or
            announces so), or a resumed response starts at the wrong offset.
        OutOfRange: ``offset`` lies outside the blob.
        Unavailable: The download broke more than ``retries`` times.
    """

    def __init__(
        self, client: RegistryTransport, ref: Reference, desc: Descriptor, *, offset: int = 0
    ) -> None:
        validate_digest(desc.digest)
        if not 0 <= offset <= desc.size:
            raise OutOfRange(f"offset {offset} outside blob {desc.digest} of {desc.size} bytes")
        self.host = ""
        self._client = client
        self._ref = ref
        self._desc = desc
        self._position = offset  # absolute offset of the next byte from the network
        self._resumes = 0
        # One budget for the stream: failed opens and resumes count alike.
        self._retrying = Retrying(client.retry, self._what)
        self._resp: aiohttp.ClientResponse | None = None
        self._serving = HostConfig(url="")
        self._done = False

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._next_chunk()
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Release the connection; iteration then ends."""
        self._done = True
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.release()

    @property
    def _what(self) -> str:
        return f"blob {self._ref.repository}@{self._desc.digest}"

    async def _next_chunk(self) -> bytes:
        size = self._desc.size
        buf = bytearray()
        while len(buf) < BLOB_CHUNK_SIZE and self._position < size:
            if self._resp is None:
                await self._open()
            assert self._resp is not None
            try:
                with self._client._translate(self._serving.netloc):
                    data = await self._resp.content.read(BLOB_CHUNK_SIZE - len(buf))
            except Unavailable as exc:
                await self._resume(exc)
                continue
            if not data:
                await self._resume(
                    Unavailable(
                        f"{self._what} from {self.host}: response ended at byte "
                        f"{self._position} of {size}"
                    )
                )
                continue
            buf += data
            self._position += len(data)
        if self._position >= size:
            await self._finish()
        return bytes(buf)

    async def _finish(self) -> None:
        """Check that nothing follows the last expected byte, then release the response."""
        size, resp = self._desc.size, self._resp
        extra = b""
        if resp is not None:
            with self._client._translate(self._serving.netloc):
                extra = await resp.content.read(1)
        if extra or self._position > size:
            # More bytes than the descriptor says: this is not the blob we asked for.
            raise FailedPrecondition(
                f"{self._what} from {self.host}: server sent more than the expected {size} bytes"
            )
        await self.aclose()

    async def _resume(self, exc: Unavailable) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()  # the connection is broken: do not return it to the pool
        if self._position >= self._desc.size:
            return  # everything arrived; only the end of the response was lost
        if self._resumes >= self._client.retries:
            raise Unavailable(f"{exc} (gave up after {self._resumes} resumes)") from exc
        self._resumes += 1
        log.info(
            "%s: %s; resuming at byte %d (resume %d of %d)",
            self._what,
            exc,
            self._position,
            self._resumes,
            self._client.retries,
        )
        await self._retrying.failed(exc)

    async def _open(self) -> None:
        if self._resp is not None or 0 < self._desc.size <= self._position:
            return  # open already, or resuming at the very end: nothing left to ask for
        hosts = self._client.hosts(self._ref, "pull")
        # Resume where the data was coming from; the others are the fallback.
        hosts.sort(key=lambda h: h.url != self.host)
        self._resp, self._serving = await self._client._try_hosts(
            hosts, self._open_on, self._retrying)
        self.host = self._serving.url
        log.info("fetching %s from %s (from byte %d)", self._what, self.host, self._position)

    async def _open_on(self, host: HostConfig) -> tuple[aiohttp.ClientResponse, HostConfig]:
        client, start, size = self._client, self._position, self._desc.size
        # identity: the bytes must arrive exactly as stored, never re-encoded.
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        url = client._url(host, self._ref, "blobs", self._desc.digest)
        resp = await client._send(
            host, "GET", url, [scope(self._ref.path, "pull")], headers=headers
        )
        try:
            await client._raise_for_status(resp, self._what, host)
            skip = 0
            if resp.status == 206:
                first = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if first != str(start):
                    raise FailedPrecondition(
                        f"{self._what} from {host.url}: asked for bytes from {start}, got "
                        f"Content-Range {resp.headers.get('Content-Range')!r}"
                    )
            elif start:
                skip = start  # Range ignored: the whole blob is coming again
            length = content_length(resp)
            if length is not None and length - skip > size - start:
                raise FailedPrecondition(
                    f"{self._what} from {host.url}: server announced {length - skip + start} "
                    f"bytes, more than the expected {size} bytes"
                )
            with client._translate(host.netloc):
                while skip:
                    skipped = await resp.content.read(min(skip, BLOB_CHUNK_SIZE))
                    if not skipped:
                        raise Unavailable(f"{self._what} from {host.url}: ended early")
                    skip -= len(skipped)
        except BaseException:
            resp.close()
            raise
        return resp, host
