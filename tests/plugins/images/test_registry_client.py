"""The registry client against a real ``docker-registry`` and small fake servers.

The fakes are aiohttp apps built in the test: they misbehave on purpose (drop the
connection, send wrong or extra bytes, serve schema 1, ask for bearer tokens) in
ways a real registry will not on demand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runtime.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unauthenticated,
    Unavailable,
)
from runtime.pkg.registry import (
    BLOB_CHUNK_SIZE,
    Credentials,
    Descriptor,
    HostConfig,
    Reference,
    RegistryClient,
    load_hosts,
    parse_reference,
)
from runtime.pkg.registry import types as mt
from runtime.pkg.registry.retry import RetryPolicy
from tests.fixtures.images import ImageLayout, blob_path
from tests.fixtures.plugin import AUTH_PASSWORD, AUTH_USER
from tests.fixtures.registry import Registry, free_port


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _client(**kwargs: Any) -> RegistryClient:
    # Short timeouts and waits between attempts keep failure tests fast; loopback
    # answers in microseconds. These specs count attempts and resumes, not the backoff.
    kwargs.setdefault("plain_http", True)
    kwargs.setdefault("connect_timeout", 2)
    kwargs.setdefault("read_timeout", 5)
    kwargs.setdefault("retry", RetryPolicy(backoff=0.05, max_backoff=0.2))
    return RegistryClient(**kwargs)


def _layout_blob(layout: ImageLayout, digest: str) -> bytes:
    return blob_path(layout.path, digest).read_bytes()


def _manifest_descriptors(layout: ImageLayout) -> tuple[Descriptor, list[Descriptor]]:
    manifest = layout.manifest()
    config = Descriptor(**manifest["config"])
    layers = [Descriptor(**layer) for layer in manifest["layers"]]
    return config, layers


async def _chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1; yield its ``host:port``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:x", "docker.io/library/busybox:x"),
        ("user/app", "docker.io/user/app:latest"),
        ("quay.io/a/b/c:v1.0_rc-2", "quay.io/a/b/c:v1.0_rc-2"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("127.0.0.1:5000/x/y:t", "127.0.0.1:5000/x/y:t"),
        ("[::1]:5000/x:t", "[::1]:5000/x:t"),
        ("Registry/app", "Registry/app:latest"),
        ("a__b/c-d--e.f", "docker.io/a__b/c-d--e.f:latest"),
        ("x@sha256:" + "a" * 64, "docker.io/library/x@sha256:" + "a" * 64),
        ("x:t@sha256:" + "b" * 64, "docker.io/library/x:t@sha256:" + "b" * 64),
    ],
)
def test_parse_reference_normalises_like_docker(text: str, name: str) -> None:
    assert parse_reference(text).name == name


def test_parse_reference_fields() -> None:
    ref = parse_reference("127.0.0.1:5000/x/y@sha256:" + "c" * 64)
    assert ref == Reference(domain="127.0.0.1:5000", path="x/y", digest="sha256:" + "c" * 64)
    assert ref.repository == "127.0.0.1:5000/x/y"
    assert ref.object == ref.digest
    assert parse_reference("busybox").object == "latest"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty reference"),
        ("Busybox", "repository name must be lowercase"),
        ("busy box", "contains whitespace"),
        ("busybox:", "invalid tag ''"),
        ("busybox:-x", "invalid tag '-x'"),
        ("x/Y", "repository name must be lowercase"),
        ("x//y", "invalid repository path component ''"),
        ("x/-y", "invalid repository path component '-y'"),
        ("x@sha256:abc", "invalid digest 'sha256:abc'"),
        ("x@sha512:" + "a" * 128, "unsupported digest algorithm"),
        ("a" * 64, "image ID, not a repository name"),
        ("host:5000/", "missing repository path"),
        ("bad_host.com/x", "invalid registry host 'bad_host.com'"),
        ("x/" + "y" * 300, "longer than 255"),
    ],
)
def test_parse_reference_rejects_with_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid image reference") as info:
        parse_reference(text)
    assert message in str(info.value)


# -------------------------------------------------------------------------- hosts


def test_load_hosts_defaults_to_https_and_docker_hub_api() -> None:
    assert load_hosts(None, "docker.io") == [HostConfig(url="https://registry-1.docker.io")]
    assert load_hosts(None, "quay.io")[0].api_root.human_repr() == "https://quay.io/v2"


def test_load_hosts_plain_http_only_for_loopback(tmp_path: Path) -> None:
    assert load_hosts(None, "127.0.0.1:5000", plain_http=True)[0].url == "http://127.0.0.1:5000"
    assert load_hosts(None, "[::1]:5000", plain_http=True)[0].url == "http://[::1]:5000"
    assert load_hosts(None, "localhost", plain_http=True)[0].url == "http://localhost"
    with pytest.raises(InvalidArgument, match=r"plain HTTP to registry quay\.io refused"):
        load_hosts(tmp_path, "quay.io", plain_http=True)


def test_load_hosts_reads_mirrors_in_file_order(tmp_path: Path) -> None:
    conf = tmp_path / "registry.example.com_5000_"
    conf.mkdir()
    (conf / "hosts.toml").write_text(
        'server = "https://registry.example.com:5000"\n'
        'capabilities = ["pull", "resolve", "push"]\n'
        '[host."https://b.mirror"]\n'
        'capabilities = ["pull"]\n'
        'ca = "b.crt"\n'
        "[host.\"https://b.mirror\".header]\nx-a = ['1', '2']\n"
        '[host."http://a.mirror/prefix"]\n'
        "override_path = true\n"
        "skip_verify = true\n"
        "dial_timeout = '3s'\n"
    )
    hosts = load_hosts(tmp_path, "registry.example.com:5000")
    assert [h.url for h in hosts] == [
        "https://b.mirror",
        "http://a.mirror/prefix",
        "https://registry.example.com:5000",
    ]
    assert hosts[0] == HostConfig(
        url="https://b.mirror",
        capabilities=["pull"],
        ca=str(conf / "b.crt"),
        headers={"x-a": "1, 2"},
    )
    assert hosts[1].api_root.human_repr() == "http://a.mirror/prefix"
    assert hosts[1].skip_verify
    assert hosts[2].api_root.human_repr() == "https://registry.example.com:5000/v2"


def test_load_hosts_default_dir_and_strictness(tmp_path: Path) -> None:
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."https://m"]\n')
    assert [h.url for h in load_hosts(tmp_path, "docker.io")] == [
        "https://m",
        "https://registry-1.docker.io",
    ]
    (tmp_path / "_default" / "hosts.toml").write_text('[host."https://m"]\nclient = "c.pem"\n')
    with pytest.raises(InvalidArgument, match="client certificates"):
        load_hosts(tmp_path, "docker.io")
    (tmp_path / "_default" / "hosts.toml").write_text('capabilities = ["pul"]\n')
    with pytest.raises(InvalidArgument, match="capabilities must be a list of pull"):
        load_hosts(tmp_path, "docker.io")
    (tmp_path / "_default" / "hosts.toml").write_text("server = [\n")
    with pytest.raises(InvalidArgument, match=r"cannot read .*hosts\.toml"):
        load_hosts(tmp_path, "docker.io")


# -------------------------------------------------------------------- credentials


def _config(tmp_path: Path, auths: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def test_credentials_read_docker_config(tmp_path: Path) -> None:
    token = base64.b64encode(b"alice:pa:ss").decode()
    creds = Credentials(
        _config(
            tmp_path,
            {
                "https://index.docker.io/v1/": {"auth": token},
                "127.0.0.1:5000": {"username": "bob", "password": "pw"},
                "http://ghcr.io": {"identitytoken": "refresh"},
            },
        )
    )
    assert creds.get("docker.io") == ("alice", "pa:ss")
    assert creds.get("registry-1.docker.io") == ("alice", "pa:ss")
    assert creds.get("127.0.0.1:5000") == ("bob", "pw")
    assert creds.get("ghcr.io") == ("", "refresh")
    assert creds.get("quay.io") is None


def test_credentials_default_path_override_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert Credentials().get("docker.io") is None  # no file: no credentials
    _config(tmp_path, {"docker.io": {"username": "u", "password": "p"}})
    assert Credentials().get("docker.io") == ("u", "p")
    assert Credentials(username="x", password="y").get("quay.io") == ("x", "y")
    with pytest.raises(NotFound, match="does not exist"):
        Credentials(tmp_path / "missing.json")
    _config(tmp_path, {"docker.io": {"auth": "not base64!"}})
    with pytest.raises(InvalidArgument, match=r"auths\['docker.io'\].auth is not valid base64"):
        Credentials()


# ------------------------------------------------------------ real registry: pull


async def test_resolve_and_fetch_manifest(pushed_busybox: str, busybox_layout: ImageLayout) -> None:
    ref = parse_reference(pushed_busybox)
    expected = busybox_layout.descriptor
    async with _client() as client:
        desc, host = await client.resolve(ref)
        assert (desc.mediaType, desc.digest, desc.size) == (
            expected.media_type,
            expected.digest,
            expected.size,
        )
        assert host == f"http://{ref.domain}"
        data = await client.fetch_manifest(ref, desc)
        assert data == _layout_blob(busybox_layout, expected.digest)

        # The same manifest by digest, and a tag that does not exist.
        by_digest = parse_reference(f"{ref.repository}@{desc.digest}")
        assert (await client.resolve(by_digest))[0] == desc
        with pytest.raises(NotFound, match="library/busybox:nope not found on http://"):
            await client.resolve(parse_reference(f"{ref.repository}:nope"))


async def test_fetch_blob_verified(pushed_busybox: str, busybox_layout: ImageLayout) -> None:
    ref = parse_reference(pushed_busybox)
    config, layers = _manifest_descriptors(busybox_layout)
    async with _client() as client:
        assert await client.fetch_blob_verified(ref, config) == _layout_blob(
            busybox_layout, config.digest
        )
        layer = layers[0]
        data = _layout_blob(busybox_layout, layer.digest)
        async with client.fetch_blob(ref, layer) as stream:
            chunks = [chunk async for chunk in stream]
        assert stream.host == f"http://{ref.domain}"
        assert b"".join(chunks) == data
        assert all(len(c) == BLOB_CHUNK_SIZE for c in chunks[:-1])
        # A caller resuming its own partial ingest asks for the rest only.
        async with client.fetch_blob(ref, layer, offset=1000) as stream:
            assert b"".join([c async for c in stream]) == data[1000:]
        with pytest.raises(OutOfRange):
            client.fetch_blob(ref, layer, offset=layer.size + 1)


# ------------------------------------------------------------------ authentication


@pytest.fixture(scope="module")
def private_busybox(auth_registry: Registry, busybox_layout: ImageLayout) -> str:
    return auth_registry.push_layout(busybox_layout.path, busybox_layout.ref_name, "private/bb:1")


async def test_basic_auth_registry_needs_credentials(
    private_busybox: str, auth_registry: Registry, busybox_layout: ImageLayout, tmp_path: Path
) -> None:
    ref = parse_reference(private_busybox)
    async with _client() as client:
        with pytest.raises(Unauthenticated, match="no credentials are configured"):
            await client.resolve(ref)

    good = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    creds = Credentials(_config(tmp_path, {auth_registry.host: {"auth": good}}))
    async with _client(credentials=creds) as client:
        desc, _ = await client.resolve(ref)
        assert desc.digest == busybox_layout.descriptor.digest
        config, _ = _manifest_descriptors(busybox_layout)
        assert await client.fetch_blob_verified(ref, config)

    wrong = Credentials(username=AUTH_USER, password="wrong")
    async with _client(credentials=wrong) as client:
        with pytest.raises(Unauthenticated, match="rejected the credentials of 'moorage'"):
            await client.resolve(ref)


class _TokenServer:
    """A registry that wants bearer tokens, plus its token endpoint."""

    def __init__(self, *, oauth_post: bool) -> None:
        self.oauth_post = oauth_post
        self.token_requests: list[tuple[str, dict[str, Any], str]] = []
        self.manifest = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
        self.host = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/token", self.token)
        app.router.add_route("*", "/v2/{name:.*}/manifests/{ref}", self.manifests)
        return app

    async def token(self, request: web.Request) -> web.Response:
        posted = await request.post() if request.method == "POST" else {}
        form = {k: str(v) for k, v in posted.items()}
        auth = request.headers.get("Authorization", "")
        self.token_requests.append((request.method, form or dict(request.query), auth))
        if request.method == "POST" and not self.oauth_post:
            return web.Response(status=404)
        if form and (form.get("username"), form.get("password")) != ("u", "p"):
            return web.Response(status=401)
        user = form.get("username") or ("u" if auth == "Basic dTpw" else "anon")
        return web.json_response({"token": f"tok-{user}", "expires_in": 300})

    async def manifests(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") not in ("Bearer tok-u", "Bearer tok-anon"):
            realm = f"http://{self.host}/token"
            challenge = f'Bearer realm="{realm}",service="fake",scope="repository:x/y:pull"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        headers = {"Content-Type": mt.MEDIA_TYPE_OCI_MANIFEST}
        return web.Response(body=self.manifest, headers=headers)


@pytest.mark.parametrize(
    ("oauth_post", "credentials", "expected"),
    [
        (True, ("u", "p"), ("POST", "")),
        (False, ("u", "p"), ("GET", "Basic dTpw")),
        (True, None, ("GET", "")),
    ],
    ids=["oauth2-post", "get-with-basic-fallback", "anonymous"],
)
async def test_bearer_token_flow(
    oauth_post: bool, credentials: tuple[str, str] | None, expected: tuple[str, str]
) -> None:
    server = _TokenServer(oauth_post=oauth_post)
    creds = Credentials(username=credentials[0], password=credentials[1]) if credentials else None
    async with _serve(server.app()) as host, _client(credentials=creds) as client:
        server.host = host
        ref = parse_reference(f"{host}/x/y:1")
        desc, _ = await client.resolve(ref)
        assert desc.digest == _digest(server.manifest)
        # The token is cached for the host and scope: no second token request.
        await client.resolve(parse_reference(f"{host}/x/y:2"))
    method, fields, auth = server.token_requests[-1]
    assert (method, auth) == expected
    assert sum(1 for m, _, _ in server.token_requests if m == method) == 1
    assert fields["scope"] == "repository:x/y:pull"
    assert fields["service"] == "fake"
    if method == "POST":
        assert fields["grant_type"] == "password"
        assert fields["client_id"] == "moorage"


# ------------------------------------------------------ misbehaving blob servers


class _BlobServer:
    """Serves one blob, misbehaving as told.

    Modes: ``drop`` cuts the first ``drops`` responses after ``cut`` bytes;
    ``ignore-range`` additionally answers resumes with the whole blob (200);
    ``wrong`` serves other bytes of the same size; ``extra`` appends bytes,
    announced in Content-Length or (``extra-chunked``) not.
    """

    def __init__(self, data: bytes, mode: str = "ok", *, drops: int = 1, cut: int = 0) -> None:
        self.data = data
        self.mode = mode
        self.drops = drops
        self.cut = cut or len(data) // 2
        self.ranges: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/{name:.*}/blobs/{digest}", self.blob)
        return app

    async def blob(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        self.ranges.append(rng)
        body = self.data
        if self.mode == "wrong":
            body = bytes(b ^ 0xFF for b in body)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        resp = web.StreamResponse()
        if start and self.mode != "ignore-range":
            resp.set_status(206)
            resp.headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            body = body[start:]
        if self.mode.startswith("extra"):
            body += b"trailing garbage"
        if self.mode == "extra-chunked":
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        if self.mode in ("drop", "ignore-range") and len(self.ranges) <= self.drops:
            await resp.write(body[: self.cut])
            assert request.transport is not None
            request.transport.abort()  # the connection dies mid-body
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp


@asynccontextmanager
async def _blob_server(
    data: bytes, mode: str = "ok", **kwargs: Any
) -> AsyncIterator[tuple[_BlobServer, Reference, Descriptor]]:
    server = _BlobServer(data, mode, **kwargs)
    async with _serve(server.app()) as host:
        desc = Descriptor(
            mediaType=mt.MEDIA_TYPE_OCI_LAYER_GZIP, digest=_digest(data), size=len(data)
        )
        yield server, parse_reference(f"{host}/x/y:t"), desc


async def test_fetch_blob_resumes_with_range_after_drop() -> None:
    data = os.urandom(3 * BLOB_CHUNK_SIZE + 123)
    async with (
        _blob_server(data, "drop", drops=2, cut=1_500_000) as (server, ref, desc),
        _client() as client,
    ):
        assert await client.fetch_blob_verified(ref, desc) == data
    # Dropped at 1.5 MB, then again 1.5 MB into the resumed response.
    assert server.ranges == [None, "bytes=1500000-", "bytes=3000000-"]


async def test_fetch_blob_skips_prefix_when_range_is_ignored() -> None:
    data = os.urandom(2 * BLOB_CHUNK_SIZE)
    async with (
        _blob_server(data, "ignore-range", cut=700_000) as (server, ref, desc),
        _client() as client,
    ):
        assert await client.fetch_blob_verified(ref, desc) == data
    assert server.ranges == [None, "bytes=700000-"]


async def test_fetch_blob_gives_up_after_retries() -> None:
    data = os.urandom(100_000)
    async with (
        _blob_server(data, "drop", drops=99, cut=10) as (server, ref, desc),
        _client(retries=2) as client,
    ):
        with pytest.raises(Unavailable, match="gave up after 2 resumes"):
            await client.fetch_blob_verified(ref, desc)
    assert len(server.ranges) == 3


async def test_fetch_blob_wrong_bytes_fail_the_callers_digest_check() -> None:
    data = os.urandom(50_000)
    async with _blob_server(data, "wrong") as (_, ref, desc), _client() as client:
        # The stream only checks sizes; the caller hashes what it stores, as the
        # content store does on commit.
        hasher = hashlib.sha256()
        async with client.fetch_blob(ref, desc) as stream:
            async for chunk in stream:
                hasher.update(chunk)
        assert "sha256:" + hasher.hexdigest() != desc.digest

        with pytest.raises(FailedPrecondition) as info:
            await client.fetch_blob_verified(ref, desc)
        wrong = _digest(bytes(b ^ 0xFF for b in data))
        assert f"expected 50000 bytes with digest {desc.digest}" in str(info.value)
        assert f"got 50000 bytes with {wrong}" in str(info.value)


@pytest.mark.parametrize("mode", ["extra", "extra-chunked"])
async def test_fetch_blob_refuses_more_bytes_than_the_descriptor(mode: str) -> None:
    data = os.urandom(3000)
    async with _blob_server(data, mode) as (_, ref, desc), _client() as client:
        with pytest.raises(FailedPrecondition, match="more than the expected 3000 bytes"):
            async with client.fetch_blob(ref, desc) as stream:
                async for _ in stream:
                    pass


# ------------------------------------------------------------------------ schema 1


@pytest.mark.parametrize("content_type", [mt.MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED, "application/json"])
async def test_resolve_refuses_schema1(content_type: str) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x/y", "tag": "t", "fsLayers": []}).encode()

    async def manifest(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/v2/x/y/manifests/t", manifest)
    async with _serve(app) as host, _client() as client:
        with pytest.raises(InvalidArgument, match="schema 1 manifests are not supported") as info:
            await client.resolve(parse_reference(f"{host}/x/y:t"))
    assert f"{host}/x/y:t on http://{host} is application/vnd.docker" in str(info.value)


# ------------------------------------------------------------------------- mirrors


def _hosts_toml(tmp_path: Path, registry: Registry, mirror: str) -> Path:
    conf = tmp_path / "certs.d" / registry.host
    conf.mkdir(parents=True)
    (conf / "hosts.toml").write_text(
        f'server = "{registry.url}"\n[host."{mirror}"]\ncapabilities = ["pull", "resolve"]\n'
    )
    return conf.parent


async def test_dead_mirror_falls_through_fast(
    pushed_busybox: str, registry: Registry, busybox_layout: ImageLayout, tmp_path: Path
) -> None:
    hosts_dir = _hosts_toml(tmp_path, registry, f"http://127.0.0.1:{free_port()}")
    ref = parse_reference(pushed_busybox)
    config, _ = _manifest_descriptors(busybox_layout)
    started = time.monotonic()
    async with _client(hosts_dir=hosts_dir, plain_http=False, connect_timeout=10) as client:
        _, host = await client.resolve(ref)
        assert host == registry.url
        async with client.fetch_blob(ref, config) as stream:
            assert b"".join([c async for c in stream]) == _layout_blob(
                busybox_layout, config.digest
            )
        assert stream.host == registry.url
    # Refused connections fail at once; the connect timeout is never waited for.
    assert time.monotonic() - started < 2


async def test_stalled_mirror_falls_through_after_read_timeout(
    pushed_busybox: str, registry: Registry, tmp_path: Path
) -> None:
    # The kernel completes the handshake for the backlog, but nobody ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mirror = f"http://127.0.0.1:{silent.getsockname()[1]}"
        hosts_dir = _hosts_toml(tmp_path, registry, mirror)
        started = time.monotonic()
        async with _client(hosts_dir=hosts_dir, read_timeout=0.5) as client:
            _, host = await client.resolve(parse_reference(pushed_busybox))
        assert host == registry.url
        assert time.monotonic() - started < 3


async def test_all_hosts_failing_reports_each(registry: Registry, tmp_path: Path) -> None:
    hosts_dir = _hosts_toml(tmp_path, registry, f"http://127.0.0.1:{free_port()}")
    ref = parse_reference(f"{registry.host}/library/busybox:missing")
    async with _client(hosts_dir=hosts_dir) as client:
        with pytest.raises(NotFound, match=r"not found on .*also tried http://127.0.0.1:\d+: "):
            await client.resolve(ref)


# ---------------------------------------------------------------------------- push


def _unique(registry: Registry, name: str) -> Reference:
    return parse_reference(f"{registry.host}/moorage-test/{name}-{uuid.uuid4().hex[:8]}:v1")


async def test_push_blobs_and_manifest_then_resolve(
    registry: Registry, busybox_layout: ImageLayout
) -> None:
    target = _unique(registry, "pushed")
    config, layers = _manifest_descriptors(busybox_layout)
    manifest = _layout_blob(busybox_layout, busybox_layout.descriptor.digest)
    mdesc = Descriptor(
        mediaType=busybox_layout.descriptor.media_type,
        digest=busybox_layout.descriptor.digest,
        size=len(manifest),
    )
    async with _client() as client:
        for desc in [config, *layers]:
            assert not await client.blob_exists(target, desc.digest)
            await client.push_blob(target, desc, _chunks(_layout_blob(busybox_layout, desc.digest)))
            assert await client.blob_exists(target, desc.digest)
        await client.push_manifest(target, mdesc, manifest, "v1")

        resolved, _ = await client.resolve(target)
        assert resolved == mdesc
        assert await client.fetch_manifest(target, resolved) == manifest


async def test_push_blob_refuses_a_source_of_the_wrong_size(registry: Registry) -> None:
    target = _unique(registry, "short")
    data = b"only these bytes"
    desc = Descriptor(mediaType="application/octet-stream", digest=_digest(data), size=100)
    async with _client() as client:
        with pytest.raises(FailedPrecondition, match="source gave 16 bytes, expected 100"):
            await client.push_blob(target, desc, _chunks(data))
        assert not await client.blob_exists(target, desc.digest)


async def test_push_manifest_checks_data_against_descriptor(registry: Registry) -> None:
    target = _unique(registry, "bad")
    desc = Descriptor(mediaType=mt.MEDIA_TYPE_OCI_MANIFEST, digest=_digest(b"{}"), size=2)
    async with _client() as client:
        with pytest.raises(InvalidArgument, match="does not match its descriptor"):
            await client.push_manifest(target, desc, b"[]", "v1")
        with pytest.raises(InvalidArgument, match="invalid tag"):
            await client.push_manifest(target, desc, b"{}", "-bad")


async def test_cross_repository_mount(
    pushed_busybox: str, registry: Registry, busybox_layout: ImageLayout
) -> None:
    target = _unique(registry, "mounted")
    _, layers = _manifest_descriptors(busybox_layout)
    digest = layers[0].digest
    source = parse_reference(pushed_busybox)
    async with _client() as client:
        assert not await client.blob_exists(target, digest)
        assert await client.mount_blob(target, digest, source.path)
        assert await client.blob_exists(target, digest)
        # A full repository name on the same registry works too.
        other = _unique(registry, "mounted-full")
        assert await client.mount_blob(other, digest, source.repository)
        # Unknown blobs and other registries cannot be mounted.
        assert not await client.mount_blob(target, "sha256:" + "0" * 64, source.path)
        assert not await client.mount_blob(target, digest, "quay.io/library/busybox")


# ---------------------------------------------------------------------- lifecycle


async def test_client_must_be_entered() -> None:
    client = RegistryClient()
    with pytest.raises(RuntimeError, match="async with"):
        await client.resolve(parse_reference("127.0.0.1:1/x:y"))
