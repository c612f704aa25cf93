"""The transport under the registry client: sessions, hosts, TLS, auth and error mapping.

Every operation picks its hosts from :func:`~.hosts.load_hosts`: reads try the
hosts with the capability, mirrors first and the upstream server last; a host
that fails for any reason hands over to the next and, when all fail, the *last*
host's error is raised (the upstream is the authority), with the others
summarised in its message. Pushes use the first ``push`` host only.

aiohttp errors never escape: :meth:`RegistryTransport._translate` turns them into
:mod:`runtime.core.errors` classes naming the host, chained with ``from``.
This runs on asyncio only (aiohttp does not support trio).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
import msgspec
from yarl import URL

from runtime.core.closing import AsyncClosing
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
from runtime.pkg.digest import validate_digest
from runtime.pkg.registry.auth import Authorizer, Credentials, verified_tls
from runtime.pkg.registry.hosts import HostConfig, load_hosts
from runtime.pkg.registry.reference import Reference
from runtime.pkg.registry.retry import (
    RegistryBusy,
    Retrying,
    RetryPolicy,
    parse_retry_after,
)
from runtime.pkg.registry.types import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_SCHEMA1,
    MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    SCHEMA1_MEDIA_TYPES,
)

__all__ = ["BLOB_CHUNK_SIZE", "RegistryTransport"]

log = logging.getLogger("moorage.registry")

T = TypeVar("T")

#: Size of the chunks :class:`BlobStream` yields (the last one may be shorter).
BLOB_CHUNK_SIZE = 1 << 20
_READ_SIZE = 1 << 16
_ERROR_BODY_LIMIT = 1 << 14  # enough for a registry's JSON error, not a whole HTML page
CLEANUP_TIMEOUT = 5.0  # best-effort DELETE of an abandoned upload
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


def scope(path: str, actions: str) -> str:
    return f"repository:{path}:{actions}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def media_type(content_type: str, body: bytes = b"") -> str:
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


def check_media_type(media: str, ref: Reference, host: HostConfig) -> None:
    if media in SCHEMA1_MEDIA_TYPES:
        raise InvalidArgument(
            f"schema 1 manifests are not supported: {ref.name} on {host.url} is {media}; "
            "push the image again with a current tool to convert it to OCI or Docker schema 2"
        )
    if media not in INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES:
        raise InvalidArgument(
            f"{ref.name} on {host.url} has unsupported manifest media type {media or '(none)'!r}"
        )


def content_length(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def header_digest(resp: aiohttp.ClientResponse) -> str:
    value = resp.headers.get("Docker-Content-Digest", "")
    try:
        validate_digest(value)
    except InvalidArgument:
        return ""  # absent or not sha256: compute it ourselves
    return value


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read the body but stop once it exceeds ``limit`` (the result is then longer)."""
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_READ_SIZE):
        buf += chunk
        if len(buf) > limit:
            break
    return bytes(buf)


class RegistryTransport(AsyncClosing):
    """Sessions, hosts and errors of a registry client; the fetch and push halves build on it.

    Args:
        hosts_dir: containerd-style ``certs.d`` directory with ``hosts.toml`` files.
        credentials: Where secrets come from; ``None`` means anonymous access.
        plain_http: Allow ``http://`` (see :func:`~.hosts.load_hosts`).
        connect_timeout: Seconds to establish a TCP (and TLS) connection; keep it
            short so a dead mirror hands over to the next host quickly.
        read_timeout: Seconds without any data before a response counts as stalled.
        retries: How often one blob download resumes after a broken connection
            (default: ``retry.attempts - 1``).
        retry: How often, how patiently and for how long a failing registry is
            tried again (see :mod:`.retry`).
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
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        user_agent: str = "moorage/0.1",
    ) -> None:
        self.hosts_dir = hosts_dir
        self.plain_http = plain_http
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry = retry or RetryPolicy()
        self.retries = retries if retries is not None else self.retry.attempts - 1
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

    async def aclose(self) -> None:
        """Close the session; ``async with`` again opens a new one."""
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
                body = await read_limited(resp, _ERROR_BODY_LIMIT)
            try:
                errors = msgspec.json.decode(body, type=_RegistryErrors).errors
                detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
            except msgspec.DecodeError:
                detail = body[:200].decode(errors="replace").strip()
        reason = f"{resp.status} {resp.reason or ''}".strip()
        message = f"{what} on {host.url}: {reason}" + (f" ({detail})" if detail else "")
        if resp.status == 429 or resp.status >= 500:
            # Busy or broken for now: worth another try, after what it asks for.
            retry_after = parse_retry_after(resp.headers.get("Retry-After", ""))
            raise RegistryBusy(message, status=resp.status, retry_after=retry_after)
        cls = _STATUS_ERRORS.get(resp.status, MoorageError)
        raise cls(message)

    async def _try_hosts(
        self,
        hosts: list[HostConfig],
        op: Callable[[HostConfig], Awaitable[T]],
        retrying: Retrying | None = None,
        what: str = "registry request",
    ) -> T:
        """Run ``op`` on each host in turn until one succeeds; again, within ``retrying``.

        A round that fails on every host for a reason that may pass (5xx, 429, a
        refused or cut connection) is tried again after a wait, within the bounds of
        ``retrying`` (default: a fresh one of the client's policy).
        """
        retrying = retrying or Retrying(self.retry, what)
        while True:
            try:
                return await self._try_hosts_once(hosts, op)
            except MoorageError as exc:
                await retrying.failed(exc)

    async def _try_hosts_once(
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
        combined = type(last)(f"{last} (also tried {others})")
        combined.__dict__.update(last.__dict__)  # status, Retry-After
        raise combined from last

    def _push_host(self, ref: Reference) -> HostConfig:
        return self.hosts(ref, "push")[0]
