"""An OCI distribution client: resolve, fetch and push over aiohttp.

Every operation picks its hosts from :func:`~.hosts.load_hosts`:

* ``resolve`` (tag → digest) tries the hosts with the ``resolve`` capability,
  ``fetch_*`` those with ``pull``, mirrors first and the upstream server last.
  A host that fails for any reason (dead, 404, bad data) hands over to the
  next; when all fail the *last* host's error is raised (the upstream is the
  authority), with the others summarised in its message.
* Push operations use the first host with the ``push`` capability only, so an
  image never ends up split across registries.

aiohttp errors never escape: :meth:`RegistryClient._translate` turns them into
:mod:`runtime.core.errors` classes naming the host, chained with ``from``.
This client runs on asyncio only (aiohttp does not support trio).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, final

import aiohttp
import anyio
import msgspec
from yarl import URL

from runtime.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
    NotImplementedYet,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from runtime.plugins.content.api import validate_digest
from runtime.plugins.images.registry.auth import Authorizer, Credentials, verified_tls
from runtime.plugins.images.registry.hosts import HostConfig, load_hosts
from runtime.plugins.images.registry.reference import Reference, validate_tag
from runtime.plugins.images.registry.types import (
    ACCEPT_MANIFESTS,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    MEDIA_TYPE_DOCKER_SCHEMA1,
    MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
)

__all__ = ["BLOB_CHUNK_SIZE", "BlobStream", "RegistryClient"]

log = logging.getLogger("moorage.registry")

T = TypeVar("T")

#: Size of the chunks :class:`BlobStream` yields (the last one may be shorter).
BLOB_CHUNK_SIZE = 1 << 20
_READ_SIZE = 1 << 16
_ERROR_BODY_LIMIT = 1 << 14  # enough for a registry's JSON error, not a whole HTML page
_CLEANUP_TIMEOUT = 5.0  # best-effort DELETE of an abandoned upload
_DOCKER_HUB_API = "registry-1.docker.io"
_STATUS_ERRORS: dict[int, type[MoorageError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    405: NotImplementedYet,  # e.g. push or DELETE disabled on this registry
    416: OutOfRange,
    429: Unavailable,  # rate limited: another host (or later) may do
}


class _RegistryErrors(msgspec.Struct):
    errors: list[dict[str, Any]] = []


def _scope(path: str, actions: str) -> str:
    return f"repository:{path}:{actions}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _media_type(content_type: str, body: bytes = b"") -> str:
    """The manifest media type from ``Content-Type``, sniffing the body if it is generic."""
    media = content_type.split(";", 1)[0].strip().lower()
    known = INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES | SCHEMA1_MEDIA_TYPES
    if media in known or not body:
        return media
    # Some registries and static file servers answer application/json or
    # octet-stream; the document itself then tells what it is.
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return media
    if not isinstance(doc, dict):
        return media
    if isinstance(doc.get("mediaType"), str) and doc["mediaType"]:
        return str(doc["mediaType"])
    if doc.get("schemaVersion") == 1:
        return (
            MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED if "signatures" in doc else MEDIA_TYPE_DOCKER_SCHEMA1
        )
    if "manifests" in doc:
        return MEDIA_TYPE_OCI_INDEX
    if "config" in doc and "layers" in doc:
        return MEDIA_TYPE_OCI_MANIFEST
    return media


def _check_media_type(media: str, ref: Reference, host: HostConfig) -> None:
    if media in SCHEMA1_MEDIA_TYPES:
        raise InvalidArgument(
            f"schema 1 manifests are not supported: {ref.name} on {host.url} is {media}; "
            "push the image again with a current tool to convert it to OCI or Docker schema 2"
        )
    if media not in INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES:
        raise InvalidArgument(
            f"{ref.name} on {host.url} has unsupported manifest media type {media or '(none)'!r}"
        )


def _content_length(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _header_digest(resp: aiohttp.ClientResponse) -> str:
    value = resp.headers.get("Docker-Content-Digest", "")
    try:
        validate_digest(value)
    except InvalidArgument:
        return ""  # absent or not sha256: compute it ourselves
    return value


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read the body but stop once it exceeds ``limit`` (the result is then longer)."""
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_READ_SIZE):
        buf += chunk
        if len(buf) > limit:
            break
    return bytes(buf)


@final
class RegistryClient:
    """A client of OCI distribution registries, used as ``async with RegistryClient() as c``.

    Args:
        hosts_dir: containerd-style ``certs.d`` directory with ``hosts.toml`` files.
        credentials: Where secrets come from; ``None`` means anonymous access.
        plain_http: Allow ``http://`` (see :func:`~.hosts.load_hosts`).
        connect_timeout: Seconds to establish a TCP (and TLS) connection; keep it
            short so a dead mirror hands over to the next host quickly.
        read_timeout: Seconds without any data before a response counts as stalled.
        retries: How often one blob download resumes after a broken connection.
        user_agent: ``User-Agent`` header.
    """

    def __init__(
        self,
        *,
        hosts_dir: Path | None = None,
        credentials: Credentials | None = None,
        plain_http: bool = False,
        connect_timeout: float = 10,
        read_timeout: float = 30,
        retries: int = 3,
        user_agent: str = "moorage/0.1",
    ) -> None:
        self.hosts_dir = hosts_dir
        self.plain_http = plain_http
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.user_agent = user_agent
        self._auth = Authorizer(credentials)
        self._session: aiohttp.ClientSession | None = None
        self._hosts: dict[str, list[HostConfig]] = {}
        self._ssl: dict[tuple[str, bool], ssl.SSLContext | bool] = {}

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            ),
            headers={"User-Agent": self.user_agent},
            # Layers are gzip already and must reach the content store byte for
            # byte: never let a Content-Encoding header make aiohttp inflate them.
            auto_decompress=False,
            # A daemon should not pick up proxies and .netrc from whatever
            # environment started it.
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The underlying session; only while the client is entered."""
        if self._session is None:
            raise RuntimeError("use 'async with RegistryClient(...)' before making requests")
        return self._session

    # -- plumbing ---------------------------------------------------------------

    def hosts(self, ref: Reference, capability: str) -> list[HostConfig]:
        """The hosts to try for ``ref``, in order, that have ``capability``.

        Raises:
            FailedPrecondition: No configured host has the capability.
            InvalidArgument: The hosts configuration is invalid.
        """
        if ref.domain not in self._hosts:
            self._hosts[ref.domain] = load_hosts(
                self.hosts_dir, ref.domain, plain_http=self.plain_http
            )
        hosts = [h for h in self._hosts[ref.domain] if h.can(capability)]
        if not hosts:
            raise FailedPrecondition(
                f"no registry host for {ref.domain} has the {capability!r} capability "
                "(check its hosts.toml)"
            )
        return hosts

    def _tls(self, host: HostConfig) -> ssl.SSLContext | bool:
        key = (host.ca, host.skip_verify)
        if key not in self._ssl:
            if host.skip_verify:
                self._ssl[key] = False
            elif host.ca:
                try:
                    self._ssl[key] = ssl.create_default_context(cafile=host.ca)
                except (OSError, ssl.SSLError) as exc:
                    raise InvalidArgument(f"CA file {host.ca} for {host.url}: {exc}") from exc
            else:
                self._ssl[key] = verified_tls()
        return self._ssl[key]

    def _url(self, host: HostConfig, ref: Reference, kind: str, obj: str = "") -> URL:
        url = host.api_root / ref.path / kind
        url = url / obj if obj else url.with_path(url.path + "/")
        if (
            kind != "blobs/uploads"
            and host.netloc != ref.domain
            and not (ref.domain == "docker.io" and host.netloc == _DOCKER_HUB_API)
        ):
            # Mirrors learn which registry the content is from (containerd does the same).
            url = url.update_query(ns=ref.domain)
        return url

    @contextmanager
    def _translate(self, host: str) -> Iterator[None]:
        """Turn aiohttp and socket errors into ours, naming ``host``."""
        try:
            yield
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unavailable(
                f"registry host {host}: TLS certificate not trusted: {exc.certificate_error}"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise Unavailable(f"registry host {host}: TLS handshake failed: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(f"registry host {host}: cannot connect: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise Unavailable(
                f"registry host {host}: no connection within {self.connect_timeout}s"
            ) from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            raise Unavailable(
                f"registry host {host}: no data for {self.read_timeout}s, giving up"
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise Unavailable(f"registry host {host}: response cut short: {exc}") from exc
        except aiohttp.InvalidURL as exc:
            raise InvalidArgument(f"registry host {host}: invalid URL {exc}") from exc
        except aiohttp.ClientError as exc:
            raise Unavailable(f"registry host {host}: {type(exc).__name__}: {exc}") from exc

    async def _send(
        self,
        host: HostConfig,
        method: str,
        url: URL,
        scopes: list[str],
        *,
        headers: dict[str, str] | None = None,
        data: Any = None,
        replayable: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request, answering at most one authentication challenge.

        The caller owns the response and must release it. A 401 to a body that
        cannot be sent twice (``replayable=False``) is final, so callers send such
        bodies only after an earlier request to the host has settled authentication.
        """
        netloc = host.netloc
        tls = self._tls(host)
        # Upload locations may point elsewhere (a storage backend); credentials only
        # go to the registry host itself.
        ours = url.origin() == URL(host.url).origin()
        for attempt in (1, 2):
            request_headers = {**host.headers, **(headers or {})}
            if ours:
                with self._translate(netloc):
                    auth = await self._auth.authorization(self.session, netloc, scopes, ssl=tls)
                if auth is not None:
                    request_headers["Authorization"] = auth
            with self._translate(netloc):
                resp = await self.session.request(
                    method, url, headers=request_headers, data=data, ssl=tls
                )
            if resp.status != 401 or not ours:
                return resp
            challenges = resp.headers.getall("WWW-Authenticate", [])
            resp.release()
            if attempt == 2 or not replayable or not challenges:
                raise self._auth.refused(netloc, scopes)
            self._auth.challenged(url, challenges, scopes)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _raise_for_status(
        self, resp: aiohttp.ClientResponse, what: str, host: HostConfig
    ) -> None:
        """Raise the error class for a 4xx/5xx, quoting the registry's error message."""
        if resp.status < 400:
            return
        detail = ""
        if resp.method != "HEAD":
            with self._translate(host.netloc):
                body = await _read_limited(resp, _ERROR_BODY_LIMIT)
            try:
                errors = msgspec.json.decode(body, type=_RegistryErrors).errors
                detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
            except msgspec.DecodeError:
                detail = body[:200].decode(errors="replace").strip()
        cls = _STATUS_ERRORS.get(resp.status, Unavailable if resp.status >= 500 else MoorageError)
        reason = f"{resp.status} {resp.reason or ''}".strip()
        raise cls(f"{what} on {host.url}: {reason}" + (f" ({detail})" if detail else ""))

    async def _try_hosts(
        self, hosts: list[HostConfig], op: Callable[[HostConfig], Awaitable[T]]
    ) -> T:
        """Run ``op`` on each host in turn until one succeeds."""
        failures: list[tuple[HostConfig, MoorageError]] = []
        for host in hosts:
            try:
                return await op(host)
            except MoorageError as exc:
                failures.append((host, exc))
                if host is not hosts[-1]:
                    log.warning("registry host %s failed, trying the next: %s", host.url, exc)
        last = failures[-1][1]
        if len(failures) == 1:
            raise last
        others = "; ".join(f"{h.url}: {e}" for h, e in failures[:-1])
        raise type(last)(f"{last} (also tried {others})") from last

    def _push_host(self, ref: Reference) -> HostConfig:
        return self.hosts(ref, "push")[0]

    # -- pull ---------------------------------------------------------------------

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

        return await self._try_hosts(self.hosts(ref, "resolve"), on)

    async def _resolve_on(self, host: HostConfig, ref: Reference) -> Descriptor:
        url = self._url(host, ref, "manifests", ref.object)
        scopes = [_scope(ref.path, "pull")]
        accept = {"Accept": ACCEPT_MANIFESTS}
        resp = await self._send(host, "HEAD", url, scopes, headers=accept)
        async with resp:
            if resp.status == 404:
                raise NotFound(f"{ref.name} not found on {host.url}")
            if resp.status in (401, 403):
                await self._raise_for_status(resp, f"manifest {ref.name}", host)
            if resp.status < 300:
                media = _media_type(resp.headers.get("Content-Type", ""))
                if media in SCHEMA1_MEDIA_TYPES:
                    _check_media_type(media, ref, host)
                digest, size = _header_digest(resp), _content_length(resp)
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
                body = await _read_limited(resp, MAX_MANIFEST_SIZE)
        if len(body) > MAX_MANIFEST_SIZE:
            raise InvalidArgument(
                f"{ref.name} on {host.url} is over the {MAX_MANIFEST_SIZE}-byte manifest limit"
            )
        media = _media_type(content_type, body)
        _check_media_type(media, ref, host)
        digest = _sha256(body)
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
        scopes = [_scope(ref.path, "pull")]
        accept = {"Accept": f"{desc.mediaType}, {ACCEPT_MANIFESTS}"}

        async def on(host: HostConfig) -> bytes:
            url = self._url(host, ref, "manifests", desc.digest)
            resp = await self._send(host, "GET", url, scopes, headers=accept)
            async with resp:
                await self._raise_for_status(resp, f"manifest {ref.repository}@{desc.digest}", host)
                with self._translate(host.netloc):
                    data = await _read_limited(resp, desc.size)
            actual = _sha256(data)
            if len(data) != desc.size or actual != desc.digest:
                raise FailedPrecondition(
                    f"manifest {ref.repository}@{desc.digest} from {host.url}: expected "
                    f"{desc.size} bytes with digest {desc.digest}, got "
                    + ("more bytes" if len(data) > desc.size else f"{len(data)} bytes, {actual}")
                )
            log.info("fetched manifest %s@%s from %s", ref.repository, desc.digest, host.url)
            return data

        return await self._try_hosts(self.hosts(ref, "pull"), on)

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

    # -- push ---------------------------------------------------------------------

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """Tell whether the push host already has ``digest`` in ``ref``'s repository."""
        validate_digest(digest)
        host = self._push_host(ref)
        url = self._url(host, ref, "blobs", digest)
        resp = await self._send(host, "HEAD", url, [_scope(ref.path, "pull,push")])
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
        scopes = [_scope(ref.path, "pull,push"), _scope(source, "pull")]
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
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
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
        scopes = [_scope(ref.path, "pull,push")]
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
                digest = _header_digest(resp)
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
        if len(data) != desc.size or _sha256(data) != desc.digest:
            raise InvalidArgument(
                f"manifest data ({len(data)} bytes, {_sha256(data)}) does not match its "
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
            [_scope(ref.path, "pull,push")],
            headers={"Content-Type": desc.mediaType},
            data=data,
        )
        async with resp:
            await self._raise_for_status(resp, f"manifest {ref.path}:{tag_or_digest}", host)
            digest = _header_digest(resp)
        if digest and digest != desc.digest:
            raise FailedPrecondition(
                f"{host.url} stored the manifest as {digest}, not {desc.digest}"
            )
        log.info(
            "pushed manifest %s as %s:%s on %s", desc.digest, ref.path, tag_or_digest, host.url
        )


@final
class BlobStream:
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
        self, client: RegistryClient, ref: Reference, desc: Descriptor, *, offset: int = 0
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

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
            "%s: %s; resuming at byte %d (attempt %d of %d)",
            self._what,
            exc,
            self._position,
            self._resumes,
            self._client.retries,
        )
        await anyio.sleep(min(0.1 * 2 ** (self._resumes - 1), 2.0))

    async def _open(self) -> None:
        if self._resp is not None or 0 < self._desc.size <= self._position:
            return  # open already, or resuming at the very end: nothing left to ask for
        hosts = self._client.hosts(self._ref, "pull")
        # Resume where the data was coming from; the others are the fallback.
        hosts.sort(key=lambda h: h.url != self.host)
        self._resp, self._serving = await self._client._try_hosts(hosts, self._open_on)
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
            host, "GET", url, [_scope(self._ref.path, "pull")], headers=headers
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
            length = _content_length(resp)
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
