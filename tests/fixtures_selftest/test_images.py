"""Self-tests of the OCI image builder: external tools must accept what it writes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.images import (
    ANNOTATION_REF_NAME,
    BUSYBOX_APPLETS,
    DEFAULT_MTIME,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    MULTILAYER_ABSENT,
    MULTILAYER_HARDLINKS,
    ImageLayout,
    LayerBuilder,
    TreeEntry,
    blob_path,
    build_image,
    busybox_image,
    expected_tree,
    host_platform,
    read_blob_json,
    snapshot_tree,
)
from tests.fixtures.system import require_binary, require_root

# Test modules may load plugins; the rootdir conftest may list it too (it is deduplicated).
pytest_plugins = ["tests.fixtures.plugin"]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_blob(layout: Path, desc: dict[str, object]) -> bytes:
    data = blob_path(layout, str(desc["digest"])).read_bytes()
    assert _sha(data) == desc["digest"]
    assert len(data) == desc["size"]
    return data


def _decompress(media_type: str, data: bytes) -> bytes:
    if media_type == MEDIA_TYPE_LAYER_GZIP:
        return gzip.decompress(data)
    if media_type == MEDIA_TYPE_LAYER_ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert media_type == MEDIA_TYPE_LAYER
    return data


def _verify_manifest(layout: Path, manifest_desc: dict[str, object]) -> dict[str, object]:
    """Check every blob a manifest references; return the image config."""
    manifest = json.loads(_check_blob(layout, manifest_desc))
    config = json.loads(_check_blob(layout, manifest["config"]))
    diff_ids = []
    for layer in manifest["layers"]:
        raw = _decompress(layer["mediaType"], _check_blob(layout, layer))
        diff_ids.append(_sha(raw))
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert len(config["history"]) == len(manifest["layers"])
    return config


def _index_entry(layout: ImageLayout) -> dict[str, object]:
    index = json.loads((layout.path / "index.json").read_bytes())
    [entry] = [
        m for m in index["manifests"] if m["annotations"][ANNOTATION_REF_NAME] == layout.ref_name
    ]
    return entry


def test_layout_files(busybox_layout: ImageLayout) -> None:
    root = busybox_layout.path
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == MEDIA_TYPE_INDEX
    entry = _index_entry(busybox_layout)
    assert entry["digest"] == busybox_layout.descriptor.digest
    config = _verify_manifest(root, entry)
    os_, arch = host_platform()
    assert (config["os"], config["architecture"]) == (os_, arch)
    assert config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"][0].startswith("PATH=")


def test_multilayer_blobs_and_config(multilayer_layout: ImageLayout) -> None:
    config = _verify_manifest(multilayer_layout.path, _index_entry(multilayer_layout))
    assert len(config["rootfs"]["diff_ids"]) == 3
    assert config["config"]["WorkingDir"] == "/app"


def test_umoci_stat_accepts_layout(multilayer_layout: ImageLayout) -> None:
    umoci = require_binary("umoci")
    out = subprocess.run(
        [umoci, "stat", "--json", "--image", multilayer_layout.umoci_ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    history = json.loads(out)["history"]
    assert [h["created_by"] for h in history] == [
        "moorage-fixture busybox rootfs",
        "moorage-fixture app files",
        "moorage-fixture whiteouts",
    ]


def test_skopeo_inspect_accepts_layout(busybox_layout: ImageLayout) -> None:
    skopeo = require_binary("skopeo")
    out = subprocess.run(
        [skopeo, "inspect", busybox_layout.oci_ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    assert info["Digest"] == busybox_layout.descriptor.digest
    assert info["Architecture"] == host_platform()[1]
    assert len(info["Layers"]) == 1


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = busybox_image(tmp_path / "a")
    b = busybox_image(tmp_path / "b")
    assert a.descriptor.digest == b.descriptor.digest
    assert (tmp_path / "a" / "index.json").read_bytes() == (
        tmp_path / "b" / "index.json"
    ).read_bytes()


def test_busybox_tar_members(busybox_layout: ImageLayout) -> None:
    manifest = busybox_layout.manifest()
    data = blob_path(busybox_layout.path, manifest["layers"][0]["digest"]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert {m.mtime for m in members.values()} == {DEFAULT_MTIME}
    assert {m.uname for m in members.values()} == {""}
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    for applet in ("sh", "echo", "cat", "ls", "sleep", "true", "false", "id", "env", "mkdir",
                   "rm", "ps", "top", "wget", "nc", "hostname"):  # fmt: skip
        assert applet in BUSYBOX_APPLETS
        assert members[f"bin/{applet}"].issym()
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert members["root"].mode == 0o700
    assert (members["home/app"].uid, members["home/app"].gid) == (1000, 1000)
    for path in ("proc", "sys", "dev", "etc/passwd", "etc/group", "etc/hostname"):
        assert path in members


def test_whiteout_markers_in_upper_layer(multilayer_layout: ImageLayout) -> None:
    manifest = multilayer_layout.manifest()
    data = blob_path(multilayer_layout.path, manifest["layers"][2]["digest"]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = set(tar.getnames())
    assert {"app/.wh.remove-me.txt", "app/.wh.olddir", "app/data/.wh..wh..opq"} <= names
    middle = blob_path(multilayer_layout.path, manifest["layers"][1]["digest"]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(middle))) as tar:
        members = tar.getmembers()
    order = [m.name for m in members]
    hard = next(m for m in members if m.name == "app/hard.txt")
    assert hard.islnk() and hard.linkname == "app/shared.txt"
    # A tar hardlink must come after its target.
    assert order.index("app/hard.txt") > order.index("app/shared.txt")


def test_expected_tree_semantics(multilayer_layout: ImageLayout) -> None:
    tree = multilayer_layout.expected_tree()
    for path in MULTILAYER_ABSENT:
        assert path not in tree
    assert not any(".wh." in p for p in tree)
    assert tree["app/config.txt"].content == b"v2\n"
    assert tree["app/link"] == TreeEntry("symlink", 0o777, target="config.txt")
    assert tree["app/hard.txt"].content == tree["app/shared.txt"].content == b"shared\n"
    assert tree["app/data"].kind == "dir"
    assert [p for p in tree if p.startswith("app/data/")] == ["app/data/c.txt"]
    assert tree["app/new"].mode == 0o750
    assert tree["tmp"].mode == 0o1777
    assert (tree["app/run.sh"].uid, tree["app/run.sh"].mode) == (1000, 0o755)


def test_expected_tree_same_layer_not_hidden() -> None:
    # Whiteouts and opaque markers only hide lower layers, never their own layer.
    lower = LayerBuilder().dir("d").file("d/old", "o").file("gone", "g")
    upper = LayerBuilder().opaque("d").file("d/new", "n").whiteout("gone").file("gone2", "x")
    tree = expected_tree([lower, upper])
    assert set(tree) == {"d", "d/new", "gone2"}
    # A file replacing a directory removes the directory's content.
    tree = expected_tree([lower, LayerBuilder().file("d", "now a file")])
    assert set(tree) == {"d", "gone"}
    assert tree["d"].kind == "file"


@pytest.mark.root
def test_umoci_unpack_matches_expected_tree(multilayer_layout: ImageLayout, tmp_path: Path) -> None:
    require_root()  # ownership (uid 1000 files) is only preserved when unpacking as root
    umoci = require_binary("umoci")
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--image", multilayer_layout.umoci_ref, str(bundle)],
        check=True,
        capture_output=True,
    )
    rootfs = bundle / "rootfs"
    assert snapshot_tree(rootfs) == multilayer_layout.expected_tree()
    for link, target in MULTILAYER_HARDLINKS:
        assert os.stat(rootfs / link).st_ino == os.stat(rootfs / target).st_ino
    # The static busybox and its applet symlinks really work inside the rootfs.
    chroot = require_binary("chroot")
    run = subprocess.run(
        [chroot, str(rootfs), "/bin/sh", "-c", "echo ok; id -u app; cat /app/config.txt"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert run.stdout == "ok\n1000\nv2\n"


def test_multiarch_index(multiarch_layout: ImageLayout) -> None:
    assert multiarch_layout.descriptor.media_type == MEDIA_TYPE_INDEX
    index = multiarch_layout.manifest()
    archs = []
    for desc in index["manifests"]:
        assert ANNOTATION_REF_NAME not in desc.get("annotations", {})
        config = _verify_manifest(multiarch_layout.path, desc)
        assert config["architecture"] == desc["platform"]["architecture"]
        archs.append(config["architecture"])
    host = host_platform()[1]
    assert sorted(archs) == sorted([host, "amd64" if host == "arm64" else "arm64"])


def test_multiarch_skopeo_selects_platform(multiarch_layout: ImageLayout) -> None:
    skopeo = require_binary("skopeo")
    index = multiarch_layout.manifest()
    for desc in index["manifests"]:
        arch = desc["platform"]["architecture"]
        out = subprocess.run(
            [skopeo, "--override-arch", arch, "inspect", multiarch_layout.oci_ref],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        info = json.loads(out)
        # "Digest" stays the index digest; the layers identify the chosen manifest.
        layers = [
            lyr["digest"] for lyr in read_blob_json(multiarch_layout.path, desc["digest"])["layers"]
        ]
        assert info["Digest"] == multiarch_layout.descriptor.digest
        assert (info["Architecture"], info["Layers"]) == (arch, layers)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions(tmp_path: Path, compression: str) -> None:
    layer = LayerBuilder(implicit_parents=True).file("/etc/greeting", "hi\n")
    desc = build_image(
        tmp_path,
        [layer],
        entrypoint=["/bin/sh", "-c"],
        cmd=("echo hi",),
        env=["A=1"],
        working_dir="/w",
        user="1000:1000",
        labels={"k": "v"},
        extra_config={"StopSignal": "SIGINT"},
        platform=("linux", "arm64", "v8"),
        ref_name="c",
        compression=compression,  # type: ignore[arg-type]
    )
    config = _verify_manifest(tmp_path, desc.to_json())
    assert config["config"] == {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "Env": ["A=1"],
        "WorkingDir": "/w",
        "User": "1000:1000",
        "Labels": {"k": "v"},
        "StopSignal": "SIGINT",
    }
    assert desc.platform == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert set(expected_tree([layer])) == {"etc", "etc/greeting"}


def test_same_ref_replaces_index_entry(tmp_path: Path) -> None:
    build_image(tmp_path, [LayerBuilder().file("a", "1")], ref_name="x")
    second = build_image(tmp_path, [LayerBuilder().file("a", "2")], ref_name="x")
    build_image(tmp_path, [LayerBuilder().file("a", "3")], ref_name="y")
    index = json.loads((tmp_path / "index.json").read_bytes())
    refs = {m["annotations"][ANNOTATION_REF_NAME]: m["digest"] for m in index["manifests"]}
    assert refs.keys() == {"x", "y"}
    assert refs["x"] == second.digest
    assert read_blob_json(tmp_path, second.digest)["schemaVersion"] == 2


def test_builder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="escapes"):
        LayerBuilder().file("../etc/passwd", "x")
    with pytest.raises(ValueError, match="hardlink target"):
        LayerBuilder().hardlink("a", "missing")
