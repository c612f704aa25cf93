"""``moorage save`` / ``load``: one archive that is a Docker save and an OCI layout at once."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.plugins.runtime.helpers import RuntimeDaemon, moorage
from tests.plugins.runtime.helpers import moorage_ok as ok

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root



def test_save_writes_docker_and_oci_archive_that_load_restores(
        rd: RuntimeDaemon, pushed_busybox: str, tmp_path: Path) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    archive = tmp_path / "bb.tar"
    assert ok(rd, "save", "-o", str(archive), pushed_busybox) == ""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json", "manifest.json"} <= names
        [entry] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert entry["RepoTags"] == [pushed_busybox]
    assert all(layer in names for layer in entry["Layers"])

    ok(rd, "rmi", pushed_busybox)
    assert ok(rd, "images", "-q") == ""
    assert ok(rd, "load", "-i", str(archive)) == f"Loaded image: {pushed_busybox}\n"
    result = moorage(rd.address, "run", "--rm", "--net", "none", "--pull", "never",
                     pushed_busybox, "echo", "loaded")
    assert (result.returncode, result.stdout) == (0, "loaded\n"), result.stderr


def test_save_of_an_unknown_image_exits_125_and_leaves_no_file(
        rd: RuntimeDaemon, tmp_path: Path) -> None:
    archive = tmp_path / "none.tar"
    result = moorage(rd.address, "save", "-o", str(archive), "nosuch:1")
    assert result.returncode == 125
    assert "nosuch" in result.stderr
    assert list(tmp_path.glob("none.tar*")) == []


def test_load_of_a_garbage_file_exits_125_naming_it_and_changes_nothing(
        rd: RuntimeDaemon, pushed_busybox: str, tmp_path: Path) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    before = ok(rd, "images", "--format", "json")
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is no tar archive\n" * 100)
    result = moorage(rd.address, "load", "-i", str(garbage))
    assert result.returncode == 125
    assert f"load {garbage}" in result.stderr and "invalid_argument" in result.stderr
    missing = moorage(rd.address, "load", "-i", str(tmp_path / "absent.tar"))
    assert missing.returncode == 125 and "absent.tar" in missing.stderr
    assert ok(rd, "images", "--format", "json") == before
    assert rd.client().healthz() is not None
