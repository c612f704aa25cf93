"""Image documents: chain IDs, GC labels, decoding and the walk over an image."""

from __future__ import annotations

import hashlib
import json

import pytest

from runtime.core.errors import FailedPrecondition, InvalidArgument, NotImplementedYet
from runtime.pkg.registry.types import Descriptor, Platform
from runtime.plugins.images.manifests import (
    chain_ids,
    decode_index,
    decode_manifest,
    index_child_labels,
    kind_of,
    manifest_child_labels,
    walk,
)
from runtime.plugins.images.platforms import only

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
D = [f"sha256:{n:064x}" for n in range(10)]


def test_chain_ids_follow_the_oci_definition() -> None:
    first = chain_ids([D[1]])
    assert first == [D[1]]
    two = chain_ids([D[1], D[2]])
    assert two[1] == "sha256:" + hashlib.sha256(f"{D[1]} {D[2]}".encode()).hexdigest()
    three = chain_ids([D[1], D[2], D[3]])
    assert three[2] == "sha256:" + hashlib.sha256(f"{two[1]} {D[3]}".encode()).hexdigest()


def test_child_labels_are_containerds() -> None:
    manifest = decode_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": D[0],
                    "size": 1,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": d,
                        "size": 1,
                    }
                    for d in D[1:3]
                ],
            }
        ).encode()
    )
    assert manifest_child_labels(manifest) == {
        "containerd.io/gc.ref.content.config": D[0],
        "containerd.io/gc.ref.content.l.0": D[1],
        "containerd.io/gc.ref.content.l.1": D[2],
    }
    children = [Descriptor(mediaType=MANIFEST, digest=d, size=1) for d in D[4:6]]
    assert index_child_labels(children) == {
        "containerd.io/gc.ref.content.m.0": D[4],
        "containerd.io/gc.ref.content.m.1": D[5],
    }


def test_schema1_is_refused_by_name() -> None:
    with pytest.raises(NotImplementedYet, match="Docker schema 1"):
        decode_manifest(b"{}", "application/vnd.docker.distribution.manifest.v1+prettyjws")


def test_a_manifest_is_not_an_index() -> None:
    with pytest.raises(InvalidArgument, match="not an index"):
        decode_index(json.dumps({"mediaType": MANIFEST}).encode())


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        (INDEX, "index"),
        (MANIFEST, "manifest"),
        ("application/vnd.docker.container.image.v1+json", "config"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", "layer"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", "layer"),
        ("text/plain", "unknown"),
    ],
)
def test_kind_of_names_ingest_refs(media_type: str, kind: str) -> None:
    assert kind_of(media_type) == kind


async def test_walk_follows_the_platform_and_reports_missing() -> None:
    def doc(obj: object) -> tuple[Descriptor, bytes]:
        data = json.dumps(obj).encode()
        return Descriptor(
            mediaType=obj["mediaType"],
            digest="sha256:"  # type: ignore[index]
            + hashlib.sha256(data).hexdigest(),
            size=len(data),
        ), data

    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D[0], "size": 1}
    amd, amd_data = doc({"schemaVersion": 2, "mediaType": MANIFEST, "config": cfg, "layers": []})
    arm = Descriptor(
        mediaType=MANIFEST, digest=D[9], size=5, platform=Platform(os="linux", architecture="arm64")
    )
    amd = Descriptor(
        mediaType=MANIFEST,
        digest=amd.digest,
        size=amd.size,
        platform=Platform(os="linux", architecture="amd64"),
    )
    index, index_data = doc(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": amd.digest,
                    "size": amd.size,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {
                    "mediaType": MANIFEST,
                    "digest": arm.digest,
                    "size": arm.size,
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
            ],
        }
    )
    store = {index.digest: index_data, amd.digest: amd_data}

    async def read(desc: Descriptor) -> bytes | None:
        return store.get(desc.digest)

    one = await walk(index, read, only([Platform(os="linux", architecture="amd64")]))
    assert [d.digest for d, _ in one.manifests] == [amd.digest]
    assert one.missing == []
    assert {d.digest for d in one.blobs()} == {index.digest, amd.digest, D[0]}
    every = await walk(index, read, None, skip_missing=True)
    assert every.missing == [arm.digest]
    with pytest.raises(FailedPrecondition, match=f"content {arm.digest}"):
        await walk(index, read, None)
