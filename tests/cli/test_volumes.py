"""Named volumes: ``moorage volume ...``, ``-v NAME:PATH`` and ``--mount type=volume``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.runtime.helpers import RuntimeDaemon, moorage

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root


def ok(rd: RuntimeDaemon, *args: str) -> str:
    result = moorage(rd.address, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run(rd: RuntimeDaemon, rootfs: Path, *args: str) -> str:
    return ok(rd, "run", "--rm", "--net", "none", *args[:-1], "--rootfs", str(rootfs),
              "busybox", "sh", "-c", args[-1])


def test_volume_create_ls_inspect_rm(rd: RuntimeDaemon) -> None:
    assert ok(rd, "volume", "create", "--label", "team=ci", "data") == "data\n"
    dup = moorage(rd.address, "volume", "create", "data")
    assert dup.returncode == 1 and "already_exists" in dup.stderr
    assert ok(rd, "volume", "ls", "-q") == "data\n"
    [doc] = json.loads(ok(rd, "volume", "inspect", "data"))
    assert doc["labels"] == {"team": "ci"} and doc["used_by"] == []
    mountpoint = Path(doc["mountpoint"])
    assert mountpoint.is_dir() and str(mountpoint).startswith(str(rd.root))
    # Namespaced: another namespace has none.
    assert moorage(rd.address, "-n", "other", "volume", "ls", "-q").stdout == ""
    assert ok(rd, "volume", "rm", "data") == "data\n"
    assert not mountpoint.exists()
    assert ok(rd, "volume", "ls", "-q") == ""


def test_named_volume_data_survives_the_container_and_is_shared(rd: RuntimeDaemon,
                                                                 rootfs: Path) -> None:
    run(rd, rootfs, "-v", "shared:/data", "echo kept > /data/file")
    assert run(rd, rootfs, "--mount", "type=volume,src=shared,dst=/mnt",
               "cat /mnt/file") == "kept\n"
    # Two containers at once, one read-only.
    ok(rd, "create", "--name", "writer", "--net", "none", "-v", "shared:/data", "--rootfs",
       str(rootfs), "busybox", "sh", "-c", "echo from-writer > /data/w; sleep 30")
    ok(rd, "start", "writer")
    out = run(rd, rootfs, "-v", "shared:/data:ro",
              "for i in $(seq 50); do [ -f /data/w ] && break; sleep 0.1; done; cat /data/w; "
              "touch /data/x 2>/dev/null || echo read-only")
    assert out == "from-writer\nread-only\n"
    [doc] = json.loads(ok(rd, "volume", "inspect", "shared"))
    assert doc["used_by"] == ["writer"]


def test_rm_of_a_volume_in_use_is_refused_with_125(rd: RuntimeDaemon, rootfs: Path) -> None:
    ok(rd, "create", "--name", "user", "--net", "none", "-v", "busy:/data", "--rootfs",
       str(rootfs), "busybox", "true")
    refused = moorage(rd.address, "volume", "rm", "busy")
    assert refused.returncode == 125
    assert "volume 'busy' is in use by container user" in refused.stderr
    [doc] = json.loads(ok(rd, "volume", "inspect", "busy"))
    assert Path(doc["mountpoint"]).is_dir()
    ok(rd, "volume", "create", "idle")
    assert ok(rd, "volume", "prune", "-f") == "idle\n"
    assert ok(rd, "volume", "ls", "-q") == "busy\n"
    ok(rd, "rm", "user")
    assert ok(rd, "volume", "rm", "busy") == "busy\n"


def test_bad_volume_names_are_125_and_create_nothing(rd: RuntimeDaemon, rootfs: Path) -> None:
    for value in ("bad!name:/data", "na me:/data", "_x:/data"):
        result = moorage(rd.address, "run", "--rm", "-v", value, "--rootfs", str(rootfs),
                         "busybox", "true")
        assert result.returncode == 125 and repr(value) in result.stderr
    assert ok(rd, "volume", "ls", "-q") == ""
    assert rd.client().containers() == []
