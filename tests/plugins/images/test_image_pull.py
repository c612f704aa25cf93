"""Pull, unpack and push against a real ``docker-registry``, through a real daemon.

Some tests put :class:`CountingProxy` between the daemon and the registry: it
counts blob downloads (shared layers must be fetched once) and can throttle, so
that a daemon can be killed in the middle of a download.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime.api.types import ProgressBlob, ProgressDone
from runtime.client import Client
from runtime.core.errors import FailedPrecondition, MoorageError, Unauthenticated
from runtime.pkg.mount import mount_all, unmount
from runtime.plugins.images.manifests import chain_ids
from runtime.plugins.snapshots.api import Mount
from tests.fixtures.daemon import Daemon
from tests.fixtures.images import (
    MULTILAYER_ABSENT,
    MULTILAYER_HARDLINKS,
    ImageLayout,
    Layer,
    LayerBuilder,
    build_image,
    host_platform,
    read_blob_json,
    snapshot_tree,
)
from tests.fixtures.plugin import AUTH_PASSWORD, AUTH_USER
from tests.fixtures.registry import Registry
from tests.fixtures.system import require_binary, require_root

pytestmark = pytest.mark.root


# -- helpers ----------------------------------------------------------------------------------


class CountingProxy:
    """A pass-through HTTP proxy to a registry that counts requests and can throttle bodies."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.rate: float | None = None  # bytes per second for response bodies
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                with proxy._lock:
                    proxy.requests.append((self.command, self.path, self.headers.get("Range", "")))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        while chunk := resp.read(64 * 1024):
                            self.wfile.write(chunk)
                            if proxy.rate:
                                time.sleep(len(chunk) / proxy.rate)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def blob_gets(self) -> dict[str, int]:
        """How often each blob digest was downloaded (GET /v2/.../blobs/<digest>)."""
        counts: dict[str, int] = {}
        with self._lock:
            for method, path, _ in self.requests:
                if method == "GET" and "/blobs/sha256:" in path:
                    digest = path.rsplit("/", 1)[1]
                    counts[digest] = counts.get(digest, 0) + 1
        return counts

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def pull(client: Client, ref: str, **kw: Any) -> tuple[ProgressDone, dict[str, ProgressBlob]]:
    """Pull over plain HTTP; return the done line and the last state of every blob."""
    done: ProgressDone | None = None
    blobs: dict[str, ProgressBlob] = {}
    for event in client.pull(ref, plain_http=True, **kw):
        if isinstance(event, ProgressBlob):
            blobs[event.digest] = event
        elif isinstance(event, ProgressDone):
            done = event
    assert done is not None and done.image is not None
    return done, blobs


def expected_chain(layout: ImageLayout) -> str:
    manifest = layout.manifest()
    config = read_blob_json(layout.path, manifest["config"]["digest"])
    return chain_ids(config["rootfs"]["diff_ids"])[-1]


def mounted_tree(client: Client, chain: str, where: Path) -> dict[str, Any]:
    """The tree of the committed snapshot ``chain``, through a read-only view."""
    key = f"view-{uuid.uuid4().hex}"
    # Leased: an unreferenced snapshot is fair game for the garbage collector.
    lease = client.create_lease(key).id
    mounts = client.prepare_snapshot("overlayfs", key, chain, view=True, lease=lease)
    where.mkdir(parents=True, exist_ok=True)
    mount_all(
        [Mount(type=m.type, source=m.source, target=m.target, options=m.options) for m in mounts],
        where,
    )
    try:
        tree = snapshot_tree(where)
        for link, target in MULTILAYER_HARDLINKS:
            if (where / link).exists():
                assert (where / link).stat().st_ino == (where / target).stat().st_ino
        return tree
    finally:
        unmount(where)
        client.remove_snapshot("overlayfs", key)
        client.delete_lease(lease)


@pytest.fixture(scope="module")
def images_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of this module's own: tests push to it freely."""
    require_root()
    require_binary("docker-registry")
    require_binary("skopeo")
    with Registry(tmp_path_factory.mktemp("images-registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def multilayer_ref(images_registry: Registry, multilayer_layout: ImageLayout) -> str:
    return images_registry.push_layout(
        multilayer_layout.path, multilayer_layout.ref_name, "test/multilayer:latest"
    )


@pytest.fixture(scope="module")
def busybox_ref(images_registry: Registry, busybox_layout: ImageLayout) -> str:
    return images_registry.push_layout(
        busybox_layout.path, busybox_layout.ref_name, "test/busybox:latest"
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_root()
    with Daemon(tmp_path / "daemon") as running:
        yield running


# -- pull and unpack --------------------------------------------------------------------------


def test_pull_unpacks_the_multilayer_tree_with_whiteouts(
    daemon: Daemon, multilayer_ref: str, multilayer_layout: ImageLayout, tmp_path: Path
) -> None:
    client = daemon.client()
    done, blobs = pull(client, multilayer_ref)
    image = done.image
    assert image is not None
    assert image.name == multilayer_ref
    assert image.target.digest == multilayer_layout.descriptor.digest
    chain = expected_chain(multilayer_layout)
    assert image.labels == {"moorage/snapshotter.overlayfs": chain}
    layers = [b for b in blobs.values() if b.kind == "layer"]
    assert len(layers) == 3
    assert {(b.status, b.unpack) for b in layers} == {("done", "applied")}
    assert all(b.host == f"http://{multilayer_ref.split('/')[0]}" for b in layers)
    assert done.bytes == sum(b.total for b in blobs.values())

    tree = mounted_tree(client, chain, tmp_path / "view")
    assert tree == multilayer_layout.expected_tree()
    assert not any(path in tree for path in MULTILAYER_ABSENT)


def test_parallel_unpack_grafts_staged_layers_into_the_same_tree(
    tmp_path: Path, multilayer_ref: str, multilayer_layout: ImageLayout
) -> None:
    require_root()
    config = '[plugins."images.store"]\nparallel_unpack = true\n'
    with Daemon(tmp_path / "daemon", config) as daemon:
        client = daemon.client()
        done, _ = pull(client, multilayer_ref)
        assert "unpack.graft" in done.timings, "layers above the first were staged"
        chain = expected_chain(multilayer_layout)
        assert mounted_tree(client, chain, tmp_path / "view") == multilayer_layout.expected_tree()
        assert not any((daemon.root / "images.store" / "tmp" / "unpack").iterdir())


def test_pull_labels_content_for_the_garbage_collector(
    daemon: Daemon, multilayer_ref: str, multilayer_layout: ImageLayout
) -> None:
    client = daemon.client()
    pull(client, multilayer_ref)
    manifest = multilayer_layout.manifest()
    config = read_blob_json(multilayer_layout.path, manifest["config"]["digest"])
    labels = client.content_info(multilayer_layout.descriptor.digest).labels
    assert labels["containerd.io/gc.ref.content.config"] == manifest["config"]["digest"]
    for i, layer in enumerate(manifest["layers"]):
        assert labels[f"containerd.io/gc.ref.content.l.{i}"] == layer["digest"]
        layer_labels = client.content_info(layer["digest"]).labels
        assert layer_labels["containerd.io/uncompressed"] == config["rootfs"]["diff_ids"][i]
        domain = multilayer_ref.split("/")[0]
        assert layer_labels[f"containerd.io/distribution.source.{domain}"] == "test/multilayer"
        assert layer_labels["moorage/fetched.from"] == f"http://{domain}"
    config_labels = client.content_info(manifest["config"]["digest"]).labels
    assert config_labels["containerd.io/gc.ref.snapshot.overlayfs"] == expected_chain(
        multilayer_layout
    )
    assert client.leases() == [], "the pull's lease is gone once the image exists"
    assert client.ingests() == []


def test_pull_twice_the_second_is_a_no_op(daemon: Daemon, multilayer_ref: str) -> None:
    client = daemon.client()
    first, _ = pull(client, multilayer_ref)
    second, blobs = pull(client, multilayer_ref)
    assert second.bytes == 0
    assert {b.status for b in blobs.values()} == {"exists"}
    assert {b.unpack for b in blobs.values() if b.kind == "layer"} == {"exists"}
    assert second.image == first.image, "unchanged record: not even updated_at moves"


def test_warm_pull_of_present_image_fetches_no_blob_and_writes_nothing(
    daemon: Daemon, images_registry: Registry, multilayer_ref: str,
    multilayer_layout: ImageLayout
) -> None:
    """The second pull only asks the registry what the tag names, and leaves the store as is."""
    with CountingProxy(images_registry.host) as proxy:
        ref = multilayer_ref.replace(images_registry.host, proxy.host)
        client = daemon.client()
        first, _ = pull(client, ref)
        manifest = multilayer_layout.manifest()
        digests = [multilayer_layout.descriptor.digest, manifest["config"]["digest"],
                   *(layer["digest"] for layer in manifest["layers"])]
        before = {d: client.content_info(d) for d in digests}
        proxy.requests.clear()
        second, blobs = pull(client, ref)
    assert [method for method, _, _ in proxy.requests] == ["HEAD"]
    assert "/manifests/" in proxy.requests[0][1]
    assert second.image == first.image and second.bytes == 0
    assert {d: client.content_info(d) for d in digests} == before, "no label written again"
    assert set(blobs) == set(digests)
    assert {b.status for b in blobs.values()} == {"exists"}
    assert {b.unpack for b in blobs.values() if b.kind == "layer"} == {"exists"}
    assert client.leases() == []


def test_warm_pull_puts_back_a_label_that_went_missing(
    daemon: Daemon, multilayer_ref: str, multilayer_layout: ImageLayout
) -> None:
    """A present image missing part of what a pull records gets the whole pull again."""
    client = daemon.client()
    pull(client, multilayer_ref)
    config = multilayer_layout.manifest()["config"]["digest"]
    key = "containerd.io/gc.ref.snapshot.overlayfs"
    client.label_content(config, {key: ""})
    done, blobs = pull(client, multilayer_ref)
    assert client.content_info(config).labels[key] == expected_chain(multilayer_layout)
    assert done.bytes == 0 and {b.status for b in blobs.values()} == {"exists"}


def test_warm_pull_unpacks_again_when_the_snapshot_is_gone(
    daemon: Daemon, multilayer_ref: str, multilayer_layout: ImageLayout
) -> None:
    client = daemon.client()
    pull(client, multilayer_ref)
    chain = expected_chain(multilayer_layout)
    client.remove_snapshot("overlayfs", chain)
    done, blobs = pull(client, multilayer_ref)
    top = multilayer_layout.manifest()["layers"][-1]["digest"]
    assert blobs[top].unpack == "applied" and done.bytes == 0
    assert client.snapshot("overlayfs", chain).kind == "committed"


def test_pull_of_an_index_takes_the_host_platform_only(
    daemon: Daemon, images_registry: Registry, multiarch_layout: ImageLayout
) -> None:
    ref = images_registry.push_layout(
        multiarch_layout.path,
        multiarch_layout.ref_name,
        "test/multiarch:latest",
        all_platforms=True,
    )
    client = daemon.client()
    done, blobs = pull(client, ref)
    assert done.image is not None and done.image.target.mediaType.endswith("index.v1+json")
    index = multiarch_layout.manifest()
    host = [m for m in index["manifests"] if m["platform"]["architecture"] == host_platform()[1]]
    assert {b.digest for b in blobs.values() if b.kind == "manifest"} == {host[0]["digest"]}
    labels = client.content_info(done.image.target.digest).labels
    assert labels["containerd.io/gc.ref.content.m.0"] == host[0]["digest"]
    assert "containerd.io/gc.ref.content.m.1" not in labels
    assert client.check_image(ref, [f"linux/{host_platform()[1]}"]).complete
    assert not client.check_image(ref).complete, "the foreign manifest was not fetched"

    every, _ = pull(client, ref, all_platforms=True)
    assert client.check_image(ref).complete
    assert every.image is not None
    assert set(every.image.labels) == {"moorage/snapshotter.overlayfs"}


def test_layer_not_matching_its_diff_id_aborts_and_leaves_no_extract_snapshot(
    daemon: Daemon, images_registry: Registry, tmp_path: Path
) -> None:
    good = LayerBuilder().file("hello", "hi\n").build()
    bad = Layer(good.descriptor, "sha256:" + "0" * 64, good.data)
    build_image(tmp_path / "bad", [bad], platform=host_platform(), ref_name="bad")
    ref = images_registry.push_layout(tmp_path / "bad", "bad", "test/bad:latest")
    client = daemon.client()
    with pytest.raises(FailedPrecondition, match=r"unpacked to diffID .* but the image config"):
        pull(client, ref)
    assert client.snapshots("overlayfs") == []
    assert client.images() == []


# -- push -------------------------------------------------------------------------------------


def test_push_to_another_repository_mounts_blobs_and_pulls_back_identical(
    daemon: Daemon, images_registry: Registry, multilayer_ref: str, multilayer_layout: ImageLayout
) -> None:
    client = daemon.client()
    pull(client, multilayer_ref)
    target = images_registry.ref(f"copy{uuid.uuid4().hex[:8]}/multilayer:v1")
    statuses: dict[str, str] = {}
    for event in client.push(multilayer_ref, target, plain_http=True):
        if isinstance(event, ProgressBlob):
            statuses[event.digest] = event.status
    manifest = multilayer_layout.manifest()
    blobs = [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]
    # Same registry, other repository: cross-repository mounts, no upload.
    assert {statuses[d] for d in blobs} == {"mounted"}
    assert statuses[multilayer_layout.descriptor.digest] == "done"
    assert images_registry.inspect(target.split("/", 1)[1], raw=True) == manifest

    back = daemon.client("back")
    done, _ = pull(back, target)
    assert done.image is not None
    assert done.image.target.digest == multilayer_layout.descriptor.digest
    domain = target.split("/")[0]
    repos = client.content_info(blobs[-1]).labels[f"containerd.io/distribution.source.{domain}"]
    assert repos == ",".join(sorted(["test/multilayer", target.split("/", 1)[1].split(":")[0]]))

    again = {
        e.digest: e.status
        for e in client.push(multilayer_ref, target, plain_http=True)
        if isinstance(e, ProgressBlob)
    }
    assert {again[d] for d in blobs} == {"exists"}


# -- authentication ---------------------------------------------------------------------------


def test_basic_auth_registry_needs_the_credentials(
    daemon: Daemon, auth_registry: Registry, busybox_layout: ImageLayout
) -> None:
    ref = auth_registry.push_layout(
        busybox_layout.path, busybox_layout.ref_name, "auth/busybox:latest"
    )
    client = daemon.client()
    with pytest.raises(Unauthenticated, match="requires authentication"):
        pull(client, ref)
    with pytest.raises(Unauthenticated):
        pull(client, ref, user=AUTH_USER, password="wrong")
    done, _ = pull(client, ref, user=AUTH_USER, password=AUTH_PASSWORD)
    assert done.image is not None and done.image.name == ref


def test_the_daemon_reads_registry_credentials_from_docker_config(
    tmp_path: Path, auth_registry: Registry, busybox_layout: ImageLayout
) -> None:
    require_root()
    ref = auth_registry.push_layout(
        busybox_layout.path, busybox_layout.ref_name, "auth/config:latest"
    )
    token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token}}})
    )
    with Daemon(tmp_path / "daemon", env={"DOCKER_CONFIG": str(tmp_path / "docker")}) as daemon:
        done, _ = pull(daemon.client(), ref)
    assert done.image is not None and done.image.name == ref


# -- sharing and resuming ---------------------------------------------------------------------


def test_concurrent_pulls_sharing_layers_fetch_and_unpack_each_once(
    daemon: Daemon,
    images_registry: Registry,
    busybox_ref: str,
    multilayer_ref: str,
    busybox_layout: ImageLayout,
    multilayer_layout: ImageLayout,
) -> None:
    shared = busybox_layout.manifest()["layers"][0]["digest"]
    assert multilayer_layout.manifest()["layers"][0]["digest"] == shared
    results: dict[str, Any] = {}
    with CountingProxy(images_registry.host) as proxy:
        proxy.rate = 4 << 20  # slow enough that both pulls want the shared layer at once

        def run(name: str, ref: str) -> None:
            try:
                results[name] = pull(daemon.client(), ref.replace(images_registry.host, proxy.host))
            except MoorageError as exc:  # pragma: no cover - reported below
                results[name] = exc

        threads = [
            threading.Thread(target=run, args=("busybox", busybox_ref)),
            threading.Thread(target=run, args=("multilayer", multilayer_ref)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        counts = proxy.blob_gets()
    assert not any(isinstance(r, Exception) for r in results.values()), results
    assert counts and set(counts.values()) == {1}, counts
    unpacks = [results[name][1][shared].unpack for name in ("busybox", "multilayer")]
    assert sorted(unpacks) == ["applied", "exists"]


def test_interrupted_pull_resumes_after_a_daemon_restart(
    daemon: Daemon, images_registry: Registry, tmp_path: Path
) -> None:
    big = LayerBuilder().file("big.bin", os.urandom(6 << 20))
    desc = build_image(tmp_path / "big", [big], platform=host_platform(), ref_name="big")
    registry_ref = images_registry.push_layout(tmp_path / "big", "big", "test/big:latest")
    layer = read_blob_json(tmp_path / "big", desc.digest)["layers"][0]
    with CountingProxy(images_registry.host) as proxy:
        ref = registry_ref.replace(images_registry.host, proxy.host)
        proxy.rate = 1 << 20
        seen = threading.Event()
        failure: list[BaseException] = []

        def first_pull() -> None:
            try:
                for event in daemon.client().pull(ref, plain_http=True):
                    if (
                        isinstance(event, ProgressBlob)
                        and event.digest == layer["digest"]
                        and event.offset >= 2 << 20
                    ):
                        seen.set()
            except BaseException as exc:  # the daemon dies under it
                failure.append(exc)
            seen.set()

        thread = threading.Thread(target=first_pull)
        thread.start()
        assert seen.wait(60)
        daemon.kill()
        thread.join(30)
        assert failure, "the first pull must not have finished"

        daemon.start()
        client = daemon.client()
        ingests = {s.ref: s for s in client.ingests()}
        kept = ingests[f"layer-{layer['digest']}"].offset
        assert kept >= 1 << 20
        proxy.rate = None
        done, blobs = pull(client, ref)
        assert blobs[layer["digest"]].resumed == kept
        ranges = [r for m, p, r in proxy.requests if layer["digest"] in p and r]
        assert ranges == [f"bytes={kept}-"]
    assert done.bytes < layer["size"]
    assert client.ingests() == []


# -- archives ---------------------------------------------------------------------------------


def skopeo(tmp_path: Path, *args: str) -> None:
    """Run skopeo with a permissive policy of the test's own."""
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    subprocess.run(
        [require_binary("skopeo"), "--policy", str(policy), *args], check=True, capture_output=True
    )


def test_export_writes_an_oci_layout_that_skopeo_pushes_and_we_pull(
    daemon: Daemon,
    images_registry: Registry,
    multilayer_ref: str,
    multilayer_layout: ImageLayout,
    tmp_path: Path,
) -> None:
    client = daemon.client()
    pull(client, multilayer_ref)
    archive = tmp_path / "export.tar"
    archive.write_bytes(b"".join(client.export_images([multilayer_ref])))
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = multilayer_layout.manifest()
        for digest in (
            multilayer_layout.descriptor.digest,
            manifest["config"]["digest"],
            *(x["digest"] for x in manifest["layers"]),
        ):
            assert f"blobs/sha256/{digest.split(':')[1]}" in names
        assert json.load(tar.extractfile("oci-layout")) == {  # type: ignore[arg-type]
            "imageLayoutVersion": "1.0.0"
        }
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        docker = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    entry = index["manifests"][0]
    assert entry["digest"] == multilayer_layout.descriptor.digest
    assert entry["annotations"] == {
        "io.containerd.image.name": multilayer_ref,
        "org.opencontainers.image.ref.name": "latest",
    }
    assert docker == [
        {
            "Config": f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}",
            "RepoTags": [multilayer_ref],
            "Layers": [f"blobs/sha256/{x['digest'].split(':')[1]}" for x in manifest["layers"]],
        }
    ]

    dest = images_registry.ref("exported/multilayer:latest")
    skopeo(
        tmp_path,
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"oci-archive:{archive}",
        f"docker://{dest}",
    )
    done, _ = pull(daemon.client("fresh"), dest)
    assert done.image is not None
    assert done.image.target.digest == multilayer_layout.descriptor.digest


def test_import_of_a_skopeo_oci_archive_names_and_unpacks_the_image(
    daemon: Daemon, multilayer_layout: ImageLayout, tmp_path: Path
) -> None:
    archive = tmp_path / "skopeo.tar"
    skopeo(
        tmp_path,
        "copy",
        "--quiet",
        multilayer_layout.oci_ref,
        f"oci-archive:{archive}:example.com/imported/multilayer:v1",
    )
    client = daemon.client()
    images = client.import_images(archive.read_bytes())
    assert [i.name for i in images] == ["example.com/imported/multilayer:v1"]
    assert images[0].target.digest == multilayer_layout.descriptor.digest
    image = client.image("example.com/imported/multilayer:v1")
    chain = expected_chain(multilayer_layout)
    assert image.labels == {"moorage/snapshotter.overlayfs": chain}
    assert client.check_image(image.name).complete
    assert mounted_tree(client, chain, tmp_path / "view") == multilayer_layout.expected_tree()


def test_import_of_an_unnamed_oci_archive_uses_the_base_name(
    daemon: Daemon, busybox_layout: ImageLayout, tmp_path: Path
) -> None:
    archive = tmp_path / "unnamed.tar"
    skopeo(tmp_path, "copy", "--quiet", busybox_layout.oci_ref, f"oci-archive:{archive}")
    images = daemon.client().import_images(
        archive.read_bytes(), base_name="example.com/bb", unpack=False
    )
    assert [i.name for i in images] == [f"example.com/bb@{busybox_layout.descriptor.digest}"]
    assert images[0].labels == {}


def test_import_of_a_docker_archive_synthesizes_a_schema2_manifest(
    daemon: Daemon, multilayer_layout: ImageLayout, tmp_path: Path
) -> None:
    archive = tmp_path / "docker.tar"
    skopeo(
        tmp_path,
        "copy",
        "--quiet",
        multilayer_layout.oci_ref,
        f"docker-archive:{archive}:imported/dock:v1",
    )
    client = daemon.client()
    images = client.import_images(iter([archive.read_bytes()]))
    assert [i.name for i in images] == ["docker.io/imported/dock:v1"]
    assert images[0].target.mediaType == "application/vnd.docker.distribution.manifest.v2+json"
    chain = client.image_rootfs("imported/dock:v1").chain_id
    assert chain == expected_chain(multilayer_layout), "same layers, same chain"
    assert mounted_tree(client, chain, tmp_path / "view") == multilayer_layout.expected_tree()
