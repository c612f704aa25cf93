"""The docker/nerdctl-style top-level verbs (``ps``, ``stop``, ``exec``, ``rm``...) as typed.

Containers run the busybox directory passed with the hidden ``--rootfs`` option,
so these tests need no image service; the image verbs use the test registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.runtime.helpers import (
    RuntimeDaemon,
    SharedDaemon,
    leftovers,
    moorage,
    requests_to,
    require_runtime_host,
    wait_until,
)

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

#: A process that ends at once on SIGTERM (pid 1 gets no default signal actions).
SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")


def detached(rd: RuntimeDaemon, rootfs: Path, name: str, *command: str,
             flags: tuple[str, ...] = ()) -> None:
    """``create`` then ``start``: unlike ``run --rootfs``, the record keeps its root, so
    the container can be started again."""
    result = moorage(rd.address, "create", "--name", name, "--net", "none", *flags,
                     "--rootfs", str(rootfs), "busybox", *(command or SLEEPER))
    assert (result.returncode, result.stdout) == (0, f"{name}\n"), result.stderr
    result = moorage(rd.address, "start", name)
    assert (result.returncode, result.stdout) == (0, f"{name}\n"), result.stderr


def ok(rd: RuntimeDaemon, *args: str, input: str | None = None) -> str:
    result = moorage(rd.address, *args, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status(rd: RuntimeDaemon, name: str) -> str:
    return ok(rd, "inspect", "-f", "{{.State.Status}}", name).strip()


class TestPsAndLifecycle:
    def test_ps_shows_running_containers_and_all_with_a(self, rd: RuntimeDaemon,
                                                        rootfs: Path) -> None:
        detached(rd, rootfs, "web")
        done = moorage(rd.address, "run", "--name", "done", "--net", "none", "--rootfs",
                       str(rootfs), "busybox", "sh", "-c", "exit 3")
        assert done.returncode == 3
        assert ok(rd, "ps", "-q").split() == ["web"]
        assert sorted(ok(rd, "ps", "-a", "-q").split()) == ["done", "web"]
        table = ok(rd, "ps", "-a").splitlines()
        assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                    "PORTS", "NAMES"]
        rows = {line.split()[0]: line for line in table[1:]}
        assert "Up" in rows["web"] and "Exited (3)" in rows["done"]
        listed = {c["ID"]: c for c in json.loads(ok(rd, "ps", "-a", "--format", "json"))}
        assert listed["done"]["State"] == "stopped" and listed["done"]["ExitCode"] == 3
        assert listed["web"]["State"] == "running"
        assert listed["web"]["Command"].startswith("sh -c")

    def test_stop_sends_sigkill_after_the_grace_and_the_exit_is_137(
            self, rd: RuntimeDaemon, rootfs: Path) -> None:
        # As pid 1 without a handler, sh ignores SIGTERM: only the SIGKILL ends it.
        detached(rd, rootfs, "stubborn", "sh", "-c", "while true; do sleep 0.1; done")
        began = time.monotonic()
        assert ok(rd, "stop", "-t", "1", "stubborn") == "stubborn\n"
        elapsed = time.monotonic() - began
        assert 0.9 <= elapsed < 6, elapsed
        assert ok(rd, "wait", "stubborn") == "137\n"
        assert ok(rd, "inspect", "-f", "{{.State.ExitCode}} {{.State.Running}}",
                  "stubborn") == "137 false\n"

    def test_stop_start_and_restart(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "svc")
        began = time.monotonic()
        assert ok(rd, "stop", "svc") == "svc\n"
        assert time.monotonic() - began < 5  # the TERM handler ended it, no grace needed
        assert status(rd, "svc") == "exited"
        assert ok(rd, "start", "svc") == "svc\n"
        assert status(rd, "svc") == "running"
        first = ok(rd, "inspect", "-f", "{{.State.Pid}}", "svc")
        assert ok(rd, "restart", "svc") == "svc\n"
        assert status(rd, "svc") == "running"
        assert ok(rd, "inspect", "-f", "{{.State.Pid}}", "svc") != first
        assert ok(rd, "stop", "svc") == "svc\n"

    def test_start_attached_exits_with_the_containers_status(self, rd: RuntimeDaemon,
                                                              rootfs: Path) -> None:
        created = moorage(rd.address, "create", "--name", "once", "--net", "none",
                          "--rootfs", str(rootfs), "busybox", "sh", "-c", "echo hello; exit 4")
        assert (created.returncode, created.stdout) == (0, "once\n"), created.stderr
        assert ok(rd, "ps", "-a", "--format", "json").count('"created"') == 1
        started = moorage(rd.address, "start", "-a", "once")
        assert (started.returncode, started.stdout) == (4, "hello\n")
        # Once more: the stopped task is replaced by a new one.
        again = moorage(rd.address, "start", "-a", "once")
        assert (again.returncode, again.stdout) == (4, "hello\n")

    def test_kill_pause_unpause(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "k", "sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done")
        assert ok(rd, "pause", "k") == "k\n"
        assert status(rd, "k") == "paused"
        assert "Up (Paused)" in ok(rd, "ps")
        assert ok(rd, "unpause", "k") == "k\n"
        assert status(rd, "k") == "running"
        assert ok(rd, "kill", "-s", "USR1", "k") == "k\n"
        assert ok(rd, "wait", "k") == "42\n"
        refused = moorage(rd.address, "kill", "k")
        assert refused.returncode == 1 and "is not running" in refused.stderr

    def test_rm_refuses_a_running_container_without_f(self, rd: RuntimeDaemon,
                                                      rootfs: Path) -> None:
        detached(rd, rootfs, "busy")
        refused = moorage(rd.address, "rm", "busy")
        assert refused.returncode == 1 and "'busy' is running" in refused.stderr
        assert ok(rd, "ps", "-q") == "busy\n"
        assert ok(rd, "rm", "-f", "busy") == "busy\n"
        assert ok(rd, "ps", "-a", "-q") == ""
        assert leftovers(rd, "default", "busy") == []

    def test_rm_of_a_stopped_container_needs_no_f(self, rd: RuntimeDaemon,
                                                  rootfs: Path) -> None:
        detached(rd, rootfs, "gone", "true")
        wait_until(lambda: status(rd, "gone") == "exited", what="exit")
        assert ok(rd, "rm", "gone") == "gone\n"
        assert rd.client().containers() == []
        missing = moorage(rd.address, "rm", "gone")
        assert missing.returncode == 1 and "no such container: gone" in missing.stderr


class TestExec:
    def test_exec_takes_env_user_and_workdir(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "box")
        env = {**os.environ, "FROM_CLIENT": "client-value"}
        result = subprocess.run(
            [sys.executable, "-m", "runtime.cli.main", "--address", rd.address, "exec",
             "-e", "FROM_CLIENT", "-e", "SET=2", "-e", "UNSET_HERE_XYZ", "-u", "1000",
             "-w", "/tmp", "box", "sh", "-c",
             'echo "$FROM_CLIENT $SET ${UNSET_HERE_XYZ-unset}"; id -u; pwd; exit 5'],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert (result.returncode, result.stdout) == (5, "client-value 2 unset\n1000\n/tmp\n")

    def test_exec_exit_codes_come_from_the_error_code(self, rd: RuntimeDaemon,
                                                      rootfs: Path) -> None:
        detached(rd, rootfs, "box")
        assert moorage(rd.address, "exec", "box", "no-such-command").returncode == 127
        assert moorage(rd.address, "exec", "box", "/etc/passwd").returncode == 126
        assert ok(rd, "exec", "-i", "box", "cat", input="piped\n") == "piped\n"
        unknown = moorage(rd.address, "exec", "nobody-here", "true")
        assert unknown.returncode == 125 and "no such container" in unknown.stderr

    def test_run_with_a_missing_bind_source_is_125_not_127(self, rd: RuntimeDaemon,
                                                          rootfs: Path, tmp_path: Path) -> None:
        missing = tmp_path / "no-such-dir"
        result = moorage(rd.address, "run", "--rm", "--net", "none", "--mount",
                         f"type=bind,src={missing},dst=/data", "--rootfs", str(rootfs),
                         "busybox", "true")
        assert result.returncode == 125, result.stderr
        assert rd.client().containers() == []


class TestInspectLogsAndNames:
    def test_logs_tail_timestamps_and_since(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "talk", "sh", "-c", "for i in 1 2 3 4; do echo line$i; done; "
                 "echo oops >&2")
        wait_until(lambda: status(rd, "talk") == "exited", what="exit")
        result = moorage(rd.address, "logs", "--tail", "2", "talk")
        assert (result.stdout, result.stderr) == ("line4\n", "oops\n")
        assert ok(rd, "logs", "-t", "--tail", "1", "talk") == ""  # the last line: stderr
        stamped = moorage(rd.address, "logs", "-t", "talk").stdout.splitlines()
        assert [line.split(" ", 1)[1] for line in stamped] == ["line1", "line2", "line3",
                                                                "line4"]
        assert stamped[0][:4].isdigit() and "T" in stamped[0].split(" ")[0]
        assert ok(rd, "logs", "--since", "2000-01-01T00:00:00Z", "talk").count("line") == 4
        assert ok(rd, "logs", "--since", str(int(time.time()) + 3600), "talk") == ""
        bad = moorage(rd.address, "logs", "--tail", "many", "talk")
        assert bad.returncode == 1 and "--tail 'many'" in bad.stderr

    def test_inspect_a_container(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "seen", flags=("-e", "GREETING=hi", "--label", "team=ci"))
        [doc] = json.loads(ok(rd, "inspect", "seen"))
        assert doc["Id"] == "seen" and doc["State"]["Running"] is True
        assert "GREETING=hi" in doc["Config"]["Env"]
        assert doc["Config"]["Labels"] == {"team": "ci"}
        assert doc["State"]["Pid"] > 0
        missing = moorage(rd.address, "inspect", "seen", "nothing-named-so")
        assert missing.returncode == 1 and "no such object: nothing-named-so" in missing.stderr
        assert len(json.loads(missing.stdout)) == 1

    def test_rename_then_use_the_new_name_and_a_prefix(self, rd: RuntimeDaemon,
                                                       rootfs: Path) -> None:
        detached(rd, rootfs, "first-box")
        detached(rd, rootfs, "other")
        assert ok(rd, "rename", "first-box", "renamed") == ""
        names = {line.split()[0]: line.split()[-1] for line in ok(rd, "ps").splitlines()[1:]}
        assert names == {"first-box": "renamed", "other": "other"}
        assert ok(rd, "inspect", "-f", "{{.Id}} {{.Name}}", "renamed") == "first-box renamed\n"
        assert ok(rd, "inspect", "-f", "{{.Id}}", "fir") == "first-box\n"
        taken = moorage(rd.address, "rename", "renamed", "other")
        assert taken.returncode == 1 and "taken" in taken.stderr
        assert ok(rd, "stop", "renamed") == "renamed\n"

    def test_top_stats_and_update(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "limits")
        top = ok(rd, "top", "limits").splitlines()
        assert top[0].split() == ["UID", "PID", "PPID", "STIME", "TIME", "CMD"]
        assert any("sh -c" in line for line in top[1:])
        assert ok(rd, "update", "--memory", "64m", "--pids-limit", "50", "limits") == "limits\n"
        [row] = json.loads(ok(rd, "stats", "--no-stream", "--format", "json"))
        assert (row["ID"], row["MemLimit"]) == ("limits", 64 << 20)
        assert row["PIDs"] >= 1 and row["CPUPerc"] >= 0
        table = ok(rd, "stats", "--no-stream").splitlines()
        assert table[0].startswith("CONTAINER ID") and "limits" in table[1]
        spec = json.loads(ok(rd, "inspect", "-f", "{{json .Spec}}", "limits"))
        assert spec["linux"]["resources"]["pids"]["limit"] == 50
        nothing = moorage(rd.address, "update", "limits")
        assert nothing.returncode == 1 and "nothing to update" in nothing.stderr

    def test_port_shows_the_published_ports(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        result = moorage(rd.address, "run", "-d", "--name", "pub", "-p", "127.0.0.1:18080:80",
                         "--rootfs", str(rootfs), "busybox", *SLEEPER)
        assert result.returncode == 0, result.stderr
        assert ok(rd, "port", "pub") == "80/tcp -> 127.0.0.1:18080\n"
        assert ok(rd, "port", "pub", "80/tcp") == "127.0.0.1:18080\n"
        assert "127.0.0.1:18080->80/tcp" in ok(rd, "ps")
        assert moorage(rd.address, "port", "pub", "81").returncode == 1


class TestManyNames:
    """``rm``, ``stop`` and ``kill`` of many names: one request, each name reported alone."""

    def test_rm_of_many_names_is_one_request(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        detached(rd, rootfs, "busy")
        detached(rd, rootfs, "done-one", "true")
        detached(rd, rootfs, "done-two", "true")
        ok(rd, "rename", "done-two", "second")
        wait_until(lambda: status(rd, "done-one") == status(rd, "second") == "exited",
                   what="the exits")
        before = requests_to(rd, "/v1/verbs/rm")
        singles = requests_to(rd, "/v1/run/{id}", "DELETE")
        result = moorage(rd.address, "rm", "done-one", "busy", "second", "missing")
        # Each name as one request per name reported it: successes on stdout, in order,
        # each failure on stderr; 1 since one failed.
        assert (result.returncode, result.stdout) == (1, "done-one\nsecond\n")
        assert result.stderr.splitlines() == [
            "moorage: failed_precondition: container 'busy' is running: "
            "stop it first or use -f",
            "moorage: not_found: no such container: missing",
        ]
        assert requests_to(rd, "/v1/verbs/rm") == before + 1
        assert requests_to(rd, "/v1/run/{id}", "DELETE") == singles
        assert ok(rd, "ps", "-a", "-q") == "busy\n"
        assert leftovers(rd, "default", "done-one") == []
        assert ok(rd, "rm", "-f", "bus") == "bus\n"  # a unique prefix
        assert rd.client().containers() == []

    def test_a_name_given_twice_is_removed_once_then_missing(self, rd: RuntimeDaemon,
                                                             rootfs: Path) -> None:
        detached(rd, rootfs, "twice", "true")
        wait_until(lambda: status(rd, "twice") == "exited", what="the exit")
        result = moorage(rd.address, "rm", "twice", "twice")
        assert (result.returncode, result.stdout) == (1, "twice\n")
        assert result.stderr == "moorage: not_found: no such container: twice\n"

    def test_an_ambiguous_prefix_is_refused_by_name(self, rd: RuntimeDaemon,
                                                     rootfs: Path) -> None:
        detached(rd, rootfs, "box-a", "true")
        detached(rd, rootfs, "box-b", "true")
        result = moorage(rd.address, "rm", "-f", "box", "box-a")
        assert (result.returncode, result.stdout) == (1, "box-a\n")
        assert result.stderr == ("moorage: invalid_argument: container 'box' is ambiguous: "
                                 "box-a, box-b\n")

    def test_stop_and_kill_of_many_names_are_one_request_each(self, rd: RuntimeDaemon,
                                                              rootfs: Path) -> None:
        detached(rd, rootfs, "one")
        detached(rd, rootfs, "two")
        detached(rd, rootfs, "ended", "true")
        wait_until(lambda: status(rd, "ended") == "exited", what="the exit")
        kills = requests_to(rd, "/v1/verbs/kill")
        result = moorage(rd.address, "kill", "-s", "SIGTERM", "one", "ended", "nobody")
        assert (result.returncode, result.stdout) == (1, "one\n")
        assert result.stderr.splitlines() == [
            "moorage: failed_precondition: container 'ended' is not running",
            "moorage: not_found: no such container: nobody",
        ]
        assert requests_to(rd, "/v1/verbs/kill") == kills + 1
        wait_until(lambda: status(rd, "one") == "exited", what="the SIGTERM's exit")
        bad = moorage(rd.address, "kill", "-s", "SIGNOPE", "two", "ended")
        assert (bad.returncode, bad.stdout) == (1, "")
        assert bad.stderr.splitlines() == [
            "moorage: invalid_argument: unknown signal 'SIGNOPE'",
            "moorage: failed_precondition: container 'ended' is not running",
        ]
        stops = requests_to(rd, "/v1/verbs/stop")
        # A container not running is left as it is: a success, as before.
        assert ok(rd, "stop", "-t", "5", "two", "one", "ended") == "two\none\nended\n"
        assert requests_to(rd, "/v1/verbs/stop") == stops + 1
        assert status(rd, "two") == "exited"
        missing = moorage(rd.address, "stop", "two", "ghost")
        assert (missing.returncode, missing.stdout) == (1, "two\n")
        assert missing.stderr == "moorage: not_found: no such container: ghost\n"


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDaemon]:
    """Daemons for one class's tests (see :class:`SharedDaemon`)."""
    require_runtime_host()
    shared = SharedDaemon(tmp_path_factory)
    yield shared
    shared.close()


class TestBadInput:
    @pytest.fixture
    def rd(self, shared: SharedDaemon) -> RuntimeDaemon:
        """A daemon as a fresh one is (these refusals change nothing), shared by the class."""
        return shared.daemon()

    @pytest.mark.parametrize(("argv", "named"), [
        (["ps", "--bogus"], "--bogus"), (["stop", "-t", "soon", "x"], "'soon'"),
        (["stop", "-t", "-5", "x"], "'-5'"), (["restart", "-t", "nan", "x"], "'nan'"),
        (["exec"], "required"), (["logs", "--nope", "x"], "--nope"),
        (["run", "--bogus", "busybox"], "--bogus"), (["images", "--bogus"], "--bogus"),
        (["pull", "--bogus", "busybox"], "--bogus"), (["volume", "ls", "--bogus"], "--bogus"),
        (["network", "create", "--bogus", "n"], "--bogus"),
        (["system", "prune", "--bogus"], "--bogus"), (["volume"], "COMMAND"),
        (["update", "--cpus", "lots", "x"], "'lots'"), (["update", "--cpus", "0", "x"], "'0'"),
        (["update", "-m", "1x", "x"], "'1x'"), (["update", "--memory", "0", "x"], "'0'"),
        (["cp", "--bogus", "a", "b"], "--bogus"),
        (["login", "--bogus", "h"], "--bogus"), (["save", "--bogus", "x"], "--bogus"),
    ])
    def test_a_flag_error_prints_the_subcommands_usage_and_exits_125(
            self, rd: RuntimeDaemon, argv: list[str], named: str) -> None:
        result = moorage(rd.address, *argv)
        assert result.returncode == 125
        # A group's subcommand reports with its own usage: `moorage volume ls`.
        grouped = argv[0] in ("volume", "network", "system") and len(argv) > 1
        command = " ".join(argv[:2]) if grouped else argv[0]
        assert f"usage: moorage {command}" in result.stderr
        assert "usage: moorage [-h]" not in result.stderr
        assert named in result.stderr
        assert rd.client().containers() == []


def test_images_tag_inspect_rmi_and_info(rd: RuntimeDaemon, pushed_busybox: str,
                                        rootfs: Path) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    table = ok(rd, "images").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    repository, tag = pushed_busybox.rsplit(":", 1)
    assert table[1].split()[:2] == [repository, tag]
    assert ok(rd, "tag", pushed_busybox, "example.com/mine:v1") == ""
    assert ok(rd, "tag", pushed_busybox, "example.com/mine:v1") == ""  # replaces
    [doc] = json.loads(ok(rd, "inspect", "example.com/mine:v1"))
    assert doc["Config"]["Cmd"] == ["sh"]
    assert doc["Config"]["Entrypoint"] is None
    assert any(e.startswith("PATH=") for e in doc["Config"]["Env"] or ["PATH=/bin"])
    assert doc["Id"].startswith("sha256:")
    assert len(ok(rd, "images", "-q").split()) == 2
    created = moorage(rd.address, "create", "--name", "user", "--net", "none",
                      "example.com/mine:v1", "true")
    assert created.returncode == 0, created.stderr
    refused = moorage(rd.address, "rmi", "example.com/mine:v1")
    assert refused.returncode == 1 and "used by container user" in refused.stderr
    assert ok(rd, "rmi", "-f", "example.com/mine:v1") == "example.com/mine:v1\n"
    assert ok(rd, "images", "-q") == ok(rd, "images", "-q").splitlines()[0] + "\n"
    doc = json.loads(ok(rd, "info", "--format", "json"))
    assert doc["Containers"] == 1 and doc["Images"] == 1
    assert "runc" in doc["Runtimes"]
    assert "ServerVersion:" in ok(rd, "info")


def test_network_ls_and_inspect(rd: RuntimeDaemon, rootfs: Path) -> None:
    default = rd.daemon.network.name if rd.daemon.network else "moorage"
    assert ok(rd, "network", "ls", "-q").split() == [default]
    table = ok(rd, "network", "ls").splitlines()
    assert table[0].split() == ["NAME", "DEFAULT", "CNI", "PLUGINS", "SOURCE"]
    assert table[1].split()[:2] == [default, "*"]
    result = moorage(rd.address, "run", "-d", "--name", "netted", "--rootfs", str(rootfs),
                     "busybox", *SLEEPER)
    assert result.returncode == 0, result.stderr
    [doc] = json.loads(ok(rd, "network", "inspect", "bridge"))
    assert doc["name"] == default
    [member] = doc["containers"]
    assert member["id"] == "netted" and member["ips"]
    missing = moorage(rd.address, "network", "inspect", "nowhere")
    assert missing.returncode == 1 and "no such network: nowhere" in missing.stderr
