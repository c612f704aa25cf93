"""Writing to a registry: blob existence, cross-repository mounts, blob and manifest uploads.

Pushes use the first host with the ``push`` capability only, so an image never
ends up split across registries; an abandoned upload session is cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator

import aiohttp
import anyio
from yarl import URL

from runtime.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    Unavailable,
)
from runtime.pkg.digest import validate_digest
from runtime.pkg.registry.hosts import HostConfig
from runtime.pkg.registry.reference import Reference, validate_tag
from runtime.pkg.registry.transport import (
    CLEANUP_TIMEOUT,
    RegistryTransport,
    header_digest,
    scope,
    sha256,
)
from runtime.pkg.registry.types import (
    MAX_MANIFEST_SIZE,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
)

__all__ = ["RegistryPusher"]

log = logging.getLogger("moorage.registry")


class RegistryPusher(RegistryTransport):
    """Blob and manifest uploads over the transport."""


    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """Tell whether the push host already has ``digest`` in ``ref``'s repository."""
        validate_digest(digest)
        host = self._push_host(ref)
        url = self._url(host, ref, "blobs", digest)
        resp = await self._send(host, "HEAD", url, [scope(ref.path, "pull,push")])
        async with resp:
            if resp.status == 404:
                return False
            await self._raise_for_status(resp, f"blob {ref.repository}@{digest}", host)
            return resp.status < 300

    async def mount_blob(self, ref: Reference, digest: str, from_repo: str) -> bool:
        """Ask the push host to link ``digest`` from another repository into ``ref``'s.

        Args:
            ref: The target repository.
            digest: The blob.
            from_repo: The source, as a path (``library/busybox``) or a full
                repository name; one on another registry cannot be mounted.

        Returns:
            ``True`` when the registry mounted it (201); ``False`` when it would
            rather have an upload (202, the session is cancelled) or the source
            is on another registry.
        """
        validate_digest(digest)
        source = from_repo
        domain, _, path = from_repo.partition("/")
        if path and ("." in domain or ":" in domain or domain == "localhost"):
            if domain != ref.domain:
                return False
            source = path
        host = self._push_host(ref)
        url = self._url(host, ref, "blobs/uploads").update_query(mount=digest, **{"from": source})
        scopes = [scope(ref.path, "pull,push"), scope(source, "pull")]
        resp = await self._send(host, "POST", url, scopes, data=b"")
        async with resp:
            if resp.status == 201:
                log.info("mounted %s from %s into %s on %s", digest, source, ref.path, host.url)
                return True
            await self._raise_for_status(resp, f"mount of {digest} from {source}", host)
            location = self._location(resp, url)
        await self._cancel_upload(host, location, scopes)
        return False

    def _location(self, resp: aiohttp.ClientResponse, url: URL) -> URL:
        location = resp.headers.get("Location")
        if resp.status != 202 or not location:
            raise Unavailable(
                f"{url.origin()} answered an upload request with {resp.status} "
                "and no upload location"
            )
        return url.join(URL(location))

    async def _cancel_upload(self, host: HostConfig, location: URL, scopes: list[str]) -> None:
        # Abandoned upload sessions hold storage until the registry purges them.
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            try:
                resp = await self._send(host, "DELETE", location, scopes)
                resp.release()
            except MoorageError as exc:
                log.debug("could not cancel upload %s: %s", location, exc)

    async def push_blob(
        self, ref: Reference, desc: Descriptor, chunks: AsyncIterable[bytes]
    ) -> None:
        """Upload a blob: POST to open a session, then one streaming PUT ``?digest=``.

        Callers check :meth:`blob_exists` and try :meth:`mount_blob` first.

        Raises:
            FailedPrecondition: ``chunks`` yielded more or fewer than ``desc.size`` bytes.
            InvalidArgument: The registry refused the content (e.g. digest mismatch).
        """
        validate_digest(desc.digest)
        host = self._push_host(ref)
        scopes = [scope(ref.path, "pull,push")]
        url = self._url(host, ref, "blobs/uploads")
        resp = await self._send(host, "POST", url, scopes, data=b"")
        async with resp:
            await self._raise_for_status(resp, f"upload to {ref.repository}", host)
            location = self._location(resp, url)

        problem: list[MoorageError] = []

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            async for chunk in chunks:
                sent += len(chunk)
                if sent > desc.size:
                    problem.append(
                        FailedPrecondition(
                            f"blob {desc.digest}: source gave more than the expected "
                            f"{desc.size} bytes"
                        )
                    )
                    raise problem[-1]
                yield chunk
            if sent != desc.size:
                problem.append(
                    FailedPrecondition(
                        f"blob {desc.digest}: source gave {sent} bytes, expected {desc.size}"
                    )
                )
                raise problem[-1]

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)}
        try:
            try:
                resp = await self._send(
                    host,
                    "PUT",
                    location.update_query(digest=desc.digest),
                    scopes,
                    headers=headers,
                    data=body(),
                    replayable=False,
                )
            except MoorageError:
                # aiohttp wraps our generator's error; report the real cause.
                if problem:
                    raise problem[0] from None
                raise
            async with resp:
                await self._raise_for_status(resp, f"upload of {desc.digest}", host)
                digest = header_digest(resp)
            if digest and digest != desc.digest:
                raise FailedPrecondition(
                    f"{host.url} stored the upload as {digest}, expected {desc.digest}"
                )
        except BaseException:
            await self._cancel_upload(host, location, scopes)
            raise
        log.info(
            "pushed blob %s (%d bytes) to %s on %s", desc.digest, desc.size, ref.path, host.url
        )

    async def push_manifest(
        self, ref: Reference, desc: Descriptor, data: bytes, tag_or_digest: str
    ) -> None:
        """Upload a manifest or index under a tag or its digest.

        Raises:
            InvalidArgument: ``data`` does not match ``desc``, is too large, is
                schema 1, or ``tag_or_digest`` is neither a valid tag nor ``desc.digest``.
        """
        validate_digest(desc.digest)
        if len(data) != desc.size or sha256(data) != desc.digest:
            raise InvalidArgument(
                f"manifest data ({len(data)} bytes, {sha256(data)}) does not match its "
                f"descriptor ({desc.size} bytes, {desc.digest})"
            )
        if desc.size > MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"manifest {desc.digest} is over {MAX_MANIFEST_SIZE} bytes")
        if desc.mediaType in SCHEMA1_MEDIA_TYPES:
            raise InvalidArgument("schema 1 manifests are not supported")
        if tag_or_digest.startswith("sha256:"):
            if tag_or_digest != desc.digest:
                raise InvalidArgument(f"cannot push {desc.digest} under digest {tag_or_digest}")
        else:
            validate_tag(tag_or_digest)
        host = self._push_host(ref)
        url = self._url(host, ref, "manifests", tag_or_digest)
        resp = await self._send(
            host,
            "PUT",
            url,
            [scope(ref.path, "pull,push")],
            headers={"Content-Type": desc.mediaType},
            data=data,
        )
        async with resp:
            await self._raise_for_status(resp, f"manifest {ref.path}:{tag_or_digest}", host)
            digest = header_digest(resp)
        if digest and digest != desc.digest:
            raise FailedPrecondition(
                f"{host.url} stored the manifest as {digest}, not {desc.digest}"
            )
        log.info(
            "pushed manifest %s as %s:%s on %s", desc.digest, ref.path, tag_or_digest, host.url
        )
