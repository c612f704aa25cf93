"""A hostile image pulled through the CRI's PullImage: a clear gRPC status, nothing half-made.

The same hostile layers and documents as the admin API's specifications
(tests/reliability/test_hostile_input.py), served by the misbehaving fake
registry on the loopback: layers climbing out with ``../`` or links, a layer
whose bytes do not match its digest, a config lying about its layers, a
manifest whose digest lies. Each pull fails naming what is wrong:
INVALID_ARGUMENT for a layer entry, FAILED_PRECONDITION for bytes that do not
match their digest or diffID; no image is listed, and the store is consistent after a collection.
Absolute names and symlinks are accepted, as containerd does, and land inside
the image only.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CriClient, running_cri_daemon
from tests.fixtures.images import MEDIA_TYPE_MANIFEST
from tests.reliability.blobs import Member, canonical, memory_image, raw_layer, sha256
from tests.reliability.fake_registry import FakeRegistry, Fault
from tests.reliability.store_check import assert_store_ok
from tests.reliability.test_hostile_input import REFUSED

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry(stall_seconds=60.0) as fake:
        yield fake


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mohost-"))
    (path / "keep").write_text("host data\n")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sentinel: Path) -> Iterator[Any]:
    """One CRI daemon for the module; at the end it is up and its store consistent."""
    with running_cri_daemon(tmp_path_factory.mktemp("cri-hostile") / "d") as running:
        yield running
        assert running.client().healthz().status == "ok"
        assert_store_ok(running, collect=True, context="hostile pulls through the CRI")
    assert (sentinel / "keep").read_text() == "host data\n"


@pytest.fixture
def cri(daemon: Any, tmp_path: Path) -> Iterator[CriClient]:
    client = CriClient(daemon.cri_socket, tmp_path / "logs")
    yield client
    client.close()


def _refused(cri: CriClient, ref: str) -> grpc.RpcError:
    """Pull ``ref``: it must fail, list no image, and leave the daemon serving."""
    with pytest.raises(grpc.RpcError) as failed:
        cri.pull(ref)
    pb = cri.pb
    assert not cri.images.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=ref))).HasField("image")
    listed = cri.images.ListImages(pb.ListImagesRequest()).images
    assert not [i for i in listed if ref in (*i.repo_tags, *i.repo_digests)]
    assert cri.runtime.Version(pb.VersionRequest()).runtime_name == "moorage"
    return failed.value


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_layer_climbing_out_is_invalid_argument(cri: CriClient, registry: FakeRegistry,
                                                  name: str) -> None:
    members, says = REFUSED[name]
    ref = registry.add(f"hostile/{name}", memory_image([raw_layer(members)]))
    error = _refused(cri, ref)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert says in error.details()


def test_absolute_names_and_symlinks_land_inside_the_image(
        cri: CriClient, registry: FakeRegistry, daemon: Any, sentinel: Path) -> None:
    members = [Member(str(sentinel / "keep"), data=b"pwned by name"),
               Member("evil", tarfile.SYMTYPE, linkname=str(sentinel)),
               Member("evil/keep", data=b"pwned through a link")]
    ref = registry.add("hostile/absolute", memory_image([raw_layer(members)]))
    image_id = cri.pull(ref)
    assert image_id.startswith("sha256:")
    assert (sentinel / "keep").read_text() == "host data\n"
    cri.images.RemoveImage(cri.pb.RemoveImageRequest(image=cri.pb.ImageSpec(image=image_id)))


def test_a_layer_whose_bytes_do_not_match_its_digest_is_refused(
        cri: CriClient, registry: FakeRegistry) -> None:
    image = memory_image([raw_layer([Member("file", data=b"x" * 4096)])])
    ref = registry.add("hostile/corrupt", image)
    registry.fault(image.layers[0].digest, Fault.CORRUPT)
    try:
        error = _refused(cri, ref)
    finally:
        registry.clear_faults()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"expected {image.layers[0].digest}" in error.details(), error.details()


def test_a_config_lying_about_its_layers_is_refused(cri: CriClient,
                                                    registry: FakeRegistry) -> None:
    image = memory_image([raw_layer([Member("file", data=b"y")])], diff_ids=["sha256:" + "0" * 64])
    error = _refused(cri, registry.add("hostile/diff-ids", image))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "diffID" in error.details() and "0" * 64 in error.details(), error.details()


def test_a_manifest_whose_digest_lies_is_refused(cri: CriClient,
                                                 registry: FakeRegistry) -> None:
    image = memory_image([raw_layer([Member("file", data=b"z")])])
    registry.add("hostile/lying", image)
    manifest = image.blobs[image.root.digest]
    other = canonical({"schemaVersion": 2, "note": "not the manifest"})
    ref = registry.misnamed("hostile/lying", manifest, MEDIA_TYPE_MANIFEST, sha256(other))
    error = _refused(cri, ref)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"with digest {sha256(other)}" in error.details(), error.details()
    # A second try fails the same way: nothing of the first one was kept as good.
    assert _refused(cri, ref).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_pull_past_its_deadline_is_deadline_exceeded_and_let_go(
        cri: CriClient, registry: FakeRegistry) -> None:
    """A layer that stalls (60 s) outlasts a 2 s deadline: DEADLINE_EXCEEDED, no image
    listed, and the daemon gave the pull up: the next pull (30 s deadline, shorter than
    the stall) gets the whole image."""
    image = memory_image([raw_layer([Member("file", data=b"s" * 65536)])])
    ref = registry.add("slow/stalled", image)
    registry.fault(image.layers[0].digest, Fault.STALL, times=1)
    try:
        with pytest.raises(grpc.RpcError) as late:
            cri.pull(ref, timeout=2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, late.value.details()
        pb = cri.pb
        assert not cri.images.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=ref))).HasField("image")
    finally:
        registry.clear_faults()
    image_id = cri.pull(ref, timeout=30)
    assert image_id.startswith("sha256:")
    cri.images.RemoveImage(cri.pb.RemoveImageRequest(image=cri.pb.ImageSpec(image=image_id)))
