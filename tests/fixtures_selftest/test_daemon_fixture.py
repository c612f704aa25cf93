"""The ``Daemon`` fixture itself: failures carry the daemon's log, config merging."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.fixtures.daemon import Daemon, DaemonError


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
