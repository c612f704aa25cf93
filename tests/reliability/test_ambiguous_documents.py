"""Ambiguous image documents are refused on pull, import and push (image-spec advisory, 2021).

A document that reads both as an index and as a manifest, or that is not the kind its
descriptor (the registry's Content-Type, an index entry, an image record) says, could
show two clients two different images under one digest. Each shape is refused with a
400 naming the document's digest, and the store is left as it was: no image record,
and after a garbage collection the same content as before.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.api.types import ImageDescriptor
from runtime.client import Client
from runtime.core.errors import AlreadyExists, MoorageError
from tests.fixtures.daemon import Daemon, assert_error
from tests.fixtures.images import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, host_platform
from tests.fixtures.system import require_root
from tests.reliability.blobs import Member, MemoryImage, canonical, memory_image, raw_layer, sha256
from tests.reliability.fake_registry import FakeRegistry
from tests.reliability.store_check import assert_store_ok

pytestmark = pytest.mark.root

QUIET = """
[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000
"""
NS = "ambiguous"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    require_root()
    with Daemon(tmp_path_factory.mktemp("ambiguous") / "d", QUIET) as running:
        yield running
        assert running.client().healthz().status == "ok"
        assert_store_ok(running, collect=True, context="ambiguous documents")


@pytest.fixture(scope="module")
def image() -> MemoryImage:
    """A valid one-layer image whose manifest and index entry the shapes are built from."""
    return memory_image([raw_layer([Member("ok", data=b"ok")])])


def _manifest(image: MemoryImage) -> dict[str, Any]:
    import json

    doc: dict[str, Any] = json.loads(image.blobs[image.root.digest])
    return doc


def _entry(image: MemoryImage, media_type: str = MEDIA_TYPE_MANIFEST) -> dict[str, Any]:
    os_, arch = host_platform()
    return {"mediaType": media_type, "digest": image.root.digest, "size": image.root.size,
            "platform": {"os": os_, "architecture": arch}}


def _shapes(image: MemoryImage) -> dict[str, tuple[bytes, str]]:
    """name -> (document, the media type its descriptor gives)."""
    manifest = _manifest(image)
    image_parts = {"config": manifest["config"], "layers": manifest["layers"]}
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [_entry(image)]}
    untyped_both = {"schemaVersion": 2, "manifests": [_entry(image)], **image_parts}
    return {
        "index-carrying-layers": (canonical({**index, **image_parts}), MEDIA_TYPE_INDEX),
        "manifest-carrying-manifests": (canonical({**manifest, "manifests": [_entry(image)]}),
                                        MEDIA_TYPE_MANIFEST),
        "untyped-both-as-manifest": (canonical(untyped_both), MEDIA_TYPE_MANIFEST),
        "untyped-both-as-index": (canonical(untyped_both), MEDIA_TYPE_INDEX),
        "declares-index-holds-manifest": (
            canonical({**manifest, "mediaType": MEDIA_TYPE_INDEX}), MEDIA_TYPE_INDEX),
        "declares-manifest-holds-index": (
            canonical({**index, "mediaType": MEDIA_TYPE_MANIFEST}), MEDIA_TYPE_MANIFEST),
        "descriptor-says-index-for-a-manifest": (canonical(manifest), MEDIA_TYPE_INDEX),
        "descriptor-says-manifest-for-an-index": (canonical(index), MEDIA_TYPE_MANIFEST),
        "untyped-manifest-as-index": (
            canonical({k: v for k, v in manifest.items() if k != "mediaType"}),
            MEDIA_TYPE_INDEX),
    }


SHAPES = sorted(_shapes(memory_image([raw_layer([Member("ok", data=b"ok")])])))


def _content(api: Client) -> set[str]:
    api.gc()
    return {info.digest for info in api.content()}


def _refused(caught: pytest.ExceptionInfo[MoorageError], digest: str) -> None:
    message = assert_error(caught.value, "invalid_argument")
    assert digest in message, message
    assert "refused" in message, message


# -- pull ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_pull_refuses_ambiguous_document(daemon: Daemon, fake_registry: FakeRegistry,
                                         image: MemoryImage, shape: str) -> None:
    data, media_type = _shapes(image)[shape]
    fake_registry.add("ambiguous/base", image)  # the blobs the shapes name
    ref = fake_registry.document(f"ambiguous/pull-{shape}", data, media_type)
    api = daemon.client(NS)
    before = _content(api)
    with pytest.raises(MoorageError) as caught:
        for _ in api.pull(ref, plain_http=True):
            pass
    _refused(caught, sha256(data))
    assert not [i for i in api.images() if i.name == ref]
    assert _content(api) == before


def test_pull_refuses_index_entry_that_lies_about_its_child(
    daemon: Daemon, fake_registry: FakeRegistry, image: MemoryImage
) -> None:
    """An entry typed as a manifest whose document is an index: the child's digest is named."""
    fake_registry.add("ambiguous/base", image)
    inner = canonical({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX,
                       "manifests": [_entry(image)]})
    fake_registry.document("ambiguous/inner", inner, MEDIA_TYPE_INDEX)
    os_, arch = host_platform()
    outer = canonical({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [
        {"mediaType": MEDIA_TYPE_MANIFEST, "digest": sha256(inner), "size": len(inner),
         "platform": {"os": os_, "architecture": arch}}]})
    ref = fake_registry.document("ambiguous/outer", outer, MEDIA_TYPE_INDEX)
    api = daemon.client(NS)
    before = _content(api)
    with pytest.raises(MoorageError) as caught:
        for _ in api.pull(ref, plain_http=True):
            pass
    _refused(caught, sha256(inner))
    assert not [i for i in api.images() if i.name == ref]
    assert _content(api) == before


# -- import ---------------------------------------------------------------------------------


def _layout_tar(image: MemoryImage, extra: dict[str, bytes], index: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for digest, data in {**image.blobs, **extra}.items():
            add(f"blobs/sha256/{digest.split(':', 1)[1]}", data)
        add("index.json", index)
    return out.getvalue()


@pytest.mark.parametrize("shape", SHAPES)
def test_import_refuses_ambiguous_document(daemon: Daemon, image: MemoryImage,
                                           shape: str) -> None:
    data, media_type = _shapes(image)[shape]
    entry = {"mediaType": media_type, "digest": sha256(data), "size": len(data),
             "annotations": {"io.containerd.image.name": f"import.example/{shape}:v1"}}
    layout = canonical({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [entry]})
    api = daemon.client(NS)
    before = _content(api)
    with pytest.raises(MoorageError) as caught:
        api.import_images(_layout_tar(image, {sha256(data): data}, layout))
    _refused(caught, sha256(data))
    assert not [i for i in api.images() if shape in i.name]
    assert _content(api) == before


def test_import_refuses_ambiguous_index_json(daemon: Daemon, image: MemoryImage) -> None:
    manifest = _manifest(image)
    layout = canonical({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX,
                        "manifests": [_entry(image)], "layers": manifest["layers"]})
    api = daemon.client(NS)
    before = _content(api)
    with pytest.raises(MoorageError) as caught:
        api.import_images(_layout_tar(image, {}, layout))
    _refused(caught, "index.json")
    assert _content(api) == before


# -- push -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_push_refuses_ambiguous_document(daemon: Daemon, fake_registry: FakeRegistry,
                                         image: MemoryImage, shape: str) -> None:
    """Stored behind the checks (content API plus an image record), never sent anywhere."""
    data, media_type = _shapes(image)[shape]
    api = daemon.client(NS)
    digest = sha256(data)
    with contextlib.suppress(AlreadyExists):  # two shapes may share their bytes
        api.write_content(f"push-{shape}", data, total=len(data), expected=digest, commit=True)
    name = f"local.example/push-{shape}:v1"
    api.create_image(name, ImageDescriptor(mediaType=media_type, digest=digest, size=len(data)))
    try:
        sent = sum(fake_registry.requests.values())
        with pytest.raises(MoorageError) as caught:
            for _ in api.push(name, f"{fake_registry.host}/ambiguous/pushed-{shape}:v1",
                              plain_http=True):
                pass
        _refused(caught, digest)
        assert sum(fake_registry.requests.values()) == sent
    finally:
        api.delete_image(name)
