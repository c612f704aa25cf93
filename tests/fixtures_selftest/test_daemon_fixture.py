"""The ``Daemon`` fixture itself: failures carry the daemon's log, config merging, cgroups."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.fixtures.daemon import CGROUP_ROOT, Daemon, DaemonError, cgroup_dirs
from tests.fixtures.system import require_root


def test_daemon_config_merges_an_api_table(tmp_path: Path) -> None:
    d = Daemon(tmp_path, 'required_plugins = ["server.http"]\n[api]\nshutdown_timeout = 3.0\n')
    try:
        config = tomllib.loads(d.config_path.read_text())
    finally:
        d.close()
    assert config["api"] == {"address": str(d.socket_path), "shutdown_timeout": 3.0}
    assert config["required_plugins"] == ["server.http"]
    assert (config["root"], config["state"]) == (str(d.root), str(d.state))
    assert len(str(d.socket_path)) < 100


def test_daemon_start_failure_shows_the_log(tmp_path: Path) -> None:
    d = Daemon(tmp_path, "bogus = 1\n")
    with pytest.raises(DaemonError) as info, d:
        pytest.fail("must not start")
    assert "daemon exited with 1 before serving" in str(info.value)
    assert "[top level] unknown key 'bogus'" in str(info.value)
    assert not d.state.exists()


def test_each_daemon_puts_containers_under_its_own_cgroup_parent(tmp_path: Path) -> None:
    """Two test runs on one host never share a container's cgroup, whatever its id."""
    first, second = Daemon(tmp_path / "a"), Daemon(tmp_path / "b")
    try:
        parents = [tomllib.loads(d.config_path.read_text())["cgroup_parent"]
                   for d in (first, second)]
    finally:
        first.close()
        second.close()
    assert parents == [first.cgroup_parent, second.cgroup_parent]
    assert parents[0] != parents[1]
    assert parents[0] == f"/moorage-test-{first.state.name}"


def test_daemon_keeps_a_cgroup_parent_the_test_sets(tmp_path: Path) -> None:
    d = Daemon(tmp_path, 'cgroup_parent = "/elsewhere"\n')
    try:
        config = tomllib.loads(d.config_path.read_text())
    finally:
        d.close()
    assert (config["cgroup_parent"], d.cgroup_parent) == ("/elsewhere", "/elsewhere")


def test_close_removes_the_daemon_s_empty_cgroups(tmp_path: Path) -> None:
    """Left by a task that was never deleted, or by the name=systemd hierarchy."""
    require_root()
    d = Daemon(tmp_path)
    hierarchies = [h for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink()]
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        hierarchies = [CGROUP_ROOT]
    for hierarchy in hierarchies[:2]:
        (hierarchy / d.cgroup_parent.strip("/") / "default" / "c1").mkdir(parents=True)
    assert cgroup_dirs(d.cgroup_parent)
    d.close()
    assert cgroup_dirs(d.cgroup_parent) == []
