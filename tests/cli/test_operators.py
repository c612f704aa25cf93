"""What an operator installs: the systemd unit, readiness, the default config path and file."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

import runtime.core.daemon as daemon_module
from runtime.cli.main import main
from runtime.client.lean import LeanClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.system import require_binary, require_root

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "moorage.service"


def unit_settings() -> dict[str, str]:
    return dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                if "=" in line and not line.startswith("#"))


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require_binary("systemd-analyze")
    # verify checks that ExecStart's binary exists: point it at this checkout's moorage.
    moorage = shutil.which("moorage") or str(Path(sys.executable).with_name("moorage"))
    unit = tmp_path / "moorage.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/moorage", moorage))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # systemd-analyze only warns (exit 0) about settings it ignores: none may be ours.
    assert "moorage.service" not in result.stderr, result.stderr


def test_systemd_unit_keeps_containers_across_a_service_restart() -> None:
    settings = unit_settings()
    assert settings["Type"] == "notify"
    assert settings["KillMode"] == "process"
    assert settings["Delegate"] == "yes"
    assert settings["ExecStart"].endswith("moorage daemon")


def test_daemon_says_ready_on_notify_socket_once_the_api_listens(tmp_path: Path) -> None:
    require_root()
    path = str(tmp_path / "notify.sock")
    messages: list[str] = []
    answered: list[bool] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(30)
        daemon = Daemon(tmp_path / "daemon", env={"NOTIFY_SOCKET": path})

        checked = threading.Event()

        def receive() -> None:
            message = listener.recv(4096).decode()
            messages.append(message)
            # At READY=1 the API must already answer.
            answered.append(bool(LeanClient(daemon.address).version().version))
            checked.set()
            messages.append(listener.recv(4096).decode())

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        with daemon:
            pid = daemon.proc.pid if daemon.proc else 0
            # The API may answer (the start's health check) before READY=1 is sent:
            # stop the daemon only once the receiver has checked it at READY.
            checked.wait(30)
        receiver.join(30)
    assert messages[0].splitlines() == ["READY=1", f"MAINPID={pid}"]
    assert answered == [True]
    assert messages[1] == "STOPPING=1"


def test_daemon_without_config_reads_the_default_path(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path("/etc/moorage/plugins.toml") == daemon_module.DEFAULT_CONFIG_PATH
    default = tmp_path / "etc-moorage" / "plugins.toml"
    monkeypatch.setattr(daemon_module, "DEFAULT_CONFIG_PATH", default)
    assert daemon_module.config_path_for(None) is None  # absent: built-in defaults
    default.parent.mkdir()
    default.write_text("")
    assert daemon_module.config_path_for(None) == str(default)
    assert daemon_module.config_path_for("/given.toml") == "/given.toml"


def test_config_default_comments_every_key(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r'^[\w"]+ = ', line)]
    assert len(keys) > 30
    for i in keys:
        comment = lines[i - 1]
        assert comment.startswith("# ") and len(comment) > 10, (lines[i], comment)
    assert "# Persistent data; each plugin gets <root>/<type>.<id>.\nroot = " in text
    assert "# Unread events a subscriber may hold before it is disconnected as too slow.\n" \
           "buffer_size = 1024" in text
    raw = tomllib.loads(text)
    assert raw["plugins"]["containers.restart"] == {"backoff": 0.1, "max_backoff": 10.0,
                                                  "subscribe_delay": 10.0}
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 0
    assert os.path.getsize(path) > 0


DOCS = Path(__file__).resolve().parents[2] / "docs"

#: The docker/nerdctl verbs issue #18 asks for, each of which the command map must name.
DOCKER_VERBS = ("ps", "exec", "stop", "start", "restart", "kill", "rm", "rmi", "inspect",
                "logs", "top", "stats", "port", "wait", "pause", "unpause", "rename", "update",
                "cp", "commit", "tag", "images", "save", "load", "system df", "system prune",
                "info", "login", "logout", "volume", "network", "run", "create")


def test_coming_from_nerdctl_maps_every_docker_verb_to_a_moorage_command() -> None:
    text = (DOCS / "coming-from-nerdctl.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    docker_column = " ".join(row.split("|")[1] for row in rows)
    missing = [verb for verb in DOCKER_VERBS
               if not re.search(rf"(`|, |/){re.escape(verb)}\b", docker_column)]
    assert not missing, missing
    for code in ("125", "126", "127"):
        assert code in text


def test_troubleshooting_covers_the_operators_topics() -> None:
    text = (DOCS / "troubleshooting.md").read_text().lower()
    for topic in ("cannot reach the daemon", "cgroup v1", "v2", "missing cni plugins",
                  "registry authentication", "status error"):
        assert topic in text, topic


def test_service_doc_covers_install_the_unit_and_the_config_reference() -> None:
    text = (DOCS / "service.md").read_text()
    for heading in ("## Install", "## The unit", "## Shell completion and the manual",
                    "## Configuration reference"):
        assert heading in text, heading
    assert "contrib/systemd/moorage.service" in text
    assert "/etc/moorage/plugins.toml" in text
    assert "moorage config default" in text
