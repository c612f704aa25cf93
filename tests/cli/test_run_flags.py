"""``run``/``create`` flags a docker user expects: --pull, -e KEY, --env-file, -d --rm, --restart.

Restart policies and removal at exit are the daemon's work (``containers.restart``):
these tests watch it act with no client attached, across a daemon crash too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import Registry
from tests.plugins.runtime.helpers import (
    DEFAULT_CONFIG,
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

SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")


#: A runtime daemon whose restart manager listens for exits at once. By default it
#: waits (subscribe_delay) so that exits held at startup reach the API's subscribers
#: first; these tests watch it act right after startup.
CONFIG = DEFAULT_CONFIG + '\n[plugins."containers.restart"]\nsubscribe_delay = 0.0\n'


@pytest.fixture
def rd(tmp_path: Path) -> Iterator[RuntimeDaemon]:
    """A runtime daemon of :data:`CONFIG`."""
    require_runtime_host()
    running = RuntimeDaemon(tmp_path, CONFIG)
    try:
        yield running
    finally:
        running.close()


def ok(rd: RuntimeDaemon, *args: str) -> str:
    result = moorage(rd.address, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status(rd: RuntimeDaemon, name: str) -> str:
    return ok(rd, "inspect", "-f", "{{.State.Status}}", name).strip()


def labels(rd: RuntimeDaemon, name: str) -> dict[str, str]:
    return dict(rd.client().container(name).labels)


def created(rd: RuntimeDaemon, rootfs: Path, name: str, *flags_and_command: str) -> None:
    result = moorage(rd.address, "create", "--name", name, "--net", "none", "--rootfs",
                     str(rootfs), *flags_and_command)
    assert (result.returncode, result.stdout) == (0, f"{name}\n"), result.stderr


def _read_or_eof(fd: int) -> bytes:
    """What a pty master holds; b"" once its other end is closed (EIO on Linux)."""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


class TestPull:
    def test_run_of_a_stored_image_is_one_request(self, rd: RuntimeDaemon,
                                                  registry: Registry,
                                                  busybox_layout: object) -> None:
        ref = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,  # type: ignore[attr-defined]
                                   "flags/one:1")
        ok(rd, "pull", "--plain-http", "-q", ref)
        asked = requests_to(rd, "/v1/images/{name}/rootfs", "GET")
        assert ok(rd, "run", "--rm", "--net", "none", ref, "echo", "once") == "once\n"
        assert ok(rd, "run", "-d", "--net", "none", "--name", "bg", ref, *SLEEPER) == "bg\n"
        # The daemon found the image's root filesystem in the run request itself.
        assert requests_to(rd, "/v1/images/{name}/rootfs", "GET") == asked
        assert requests_to(rd, "/v1/run", "POST") == 1
        container = rd.client().container("bg")
        assert (container.image, container.snapshot_key) == (ref, "bg")
        assert container.snapshotter and container.spec["process"]["args"] == list(SLEEPER)
        ok(rd, "rm", "-f", "bg")
        assert rd.client().containers() == []

    def test_run_pulls_an_image_it_lacks_with_progress(self, rd: RuntimeDaemon,
                                                       registry: Registry,
                                                       busybox_layout: object) -> None:
        ref = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,  # type: ignore[attr-defined]
                                   "flags/missing:1")
        result = moorage(rd.address, "run", "--rm", "--net", "none", ref, "echo", "ran")
        assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr
        assert f"Unable to find image '{ref}' locally" in result.stderr
        assert f"pulled {ref}" in result.stderr
        # Now stored: no second pull.
        again = moorage(rd.address, "run", "--rm", "--net", "none", ref, "true")
        assert again.returncode == 0 and "pulled" not in again.stderr
        always = moorage(rd.address, "run", "--rm", "--pull", "always", "--net", "none", ref,
                         "true")
        assert always.returncode == 0 and f"pulled {ref}" in always.stderr
        assert rd.client().containers() == []

    def test_run_on_a_terminal_shows_progress_bars_while_it_pulls(self, rd: RuntimeDaemon,
                                                                  registry: Registry,
                                                                  busybox_layout: object) -> None:
        ref = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,  # type: ignore[attr-defined]
                                   "flags/bars:1")
        master, slave = os.openpty()
        try:
            with subprocess.Popen(
                    [sys.executable, "-m", "runtime.cli.main", "--address", rd.address, "run",
                     "--rm", "--net", "none", ref, "echo", "ran"],
                    stdout=subprocess.PIPE, stderr=slave, text=True,
                    env={**os.environ, "COLUMNS": "160", "TERM": "xterm"}) as proc:
                os.close(slave)
                shown = b""  # read while it runs: a full pty would block the CLI
                while chunk := _read_or_eof(master):
                    shown += chunk
                assert proc.stdout is not None
                out = proc.stdout.read()
                returncode = proc.wait(60)
        finally:
            os.close(master)
        assert (returncode, out) == (0, "ran\n")
        text = shown.decode(errors="replace")
        assert f"Unable to find image '{ref}' locally" in text
        # rich's bars: the total row, a row per blob, redrawn in place with cursor moves.
        assert "total" in text and "layer" in text and "blobs" in text
        assert "\x1b[" in text
        assert f"pulled {ref}" in text

    def test_pull_never_fails_on_a_missing_image(self, rd: RuntimeDaemon,
                                                 registry: Registry,
                                                 busybox_layout: object) -> None:
        ref = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,  # type: ignore[attr-defined]
                                   "flags/never:1")
        result = moorage(rd.address, "run", "--rm", "--pull", "never", "--net", "none", ref,
                         "true")
        assert result.returncode == 125
        assert "not_found" in result.stderr and "pulled" not in result.stderr
        assert rd.client().images() == []

    def test_create_pulls_too(self, rd: RuntimeDaemon, registry: Registry,
                              busybox_layout: object) -> None:
        ref = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,  # type: ignore[attr-defined]
                                   "flags/create:1")
        result = moorage(rd.address, "create", "--name", "c", "--net", "none", ref, "true")
        assert result.returncode == 0, result.stderr
        assert f"pulled {ref}" in result.stderr
        assert moorage(rd.address, "start", "-a", "c").returncode == 0


class TestEnvironment:
    def test_e_key_takes_the_clients_value_and_env_file_lines(self, rd: RuntimeDaemon,
                                                               rootfs: Path,
                                                               tmp_path: Path) -> None:
        env_file = tmp_path / "app.env"
        env_file.write_text("# settings\nFROM_FILE=file\n\nOVERRIDDEN=file\nFROM_CLIENT\n")
        env = {**os.environ, "FROM_CLIENT": "client", "PASSED": "passed"}
        result = subprocess.run(
            [sys.executable, "-m", "runtime.cli.main", "--address", rd.address, "run", "--rm",
             "--net", "none", "--env-file", str(env_file), "-e", "OVERRIDDEN=flag",
             "-e", "PASSED", "-e", "NOT_SET_ANYWHERE_XYZ", "--rootfs", str(rootfs), "busybox",
             "sh", "-c", 'echo "$FROM_FILE $OVERRIDDEN $FROM_CLIENT $PASSED '
             '${NOT_SET_ANYWHERE_XYZ-unset}"'],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert (result.returncode, result.stdout) == (0, "file flag client passed unset\n"), \
            result.stderr

    def test_a_missing_env_file_is_125_naming_it(self, rd: RuntimeDaemon, rootfs: Path,
                                                 tmp_path: Path) -> None:
        missing = tmp_path / "nope.env"
        result = moorage(rd.address, "run", "--rm", "--env-file", str(missing), "--rootfs",
                         str(rootfs), "busybox", "true")
        assert result.returncode == 125
        assert f"--env-file '{missing}'" in result.stderr
        assert rd.client().containers() == []


class TestMounts:
    def test_v_binds_a_host_directory_read_write_or_read_only(self, rd: RuntimeDaemon,
                                                            rootfs: Path,
                                                            tmp_path: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir()
        (shared / "in.txt").write_text("from host\n")
        result = moorage(rd.address, "run", "--rm", "--net", "none", "-v", f"{shared}:/rw",
                         "-v", f"{shared}:/ro:ro", "--rootfs", str(rootfs), "busybox", "sh",
                         "-c", "cat /rw/in.txt; echo out > /rw/out.txt; "
                         "touch /ro/x 2>/dev/null || echo read-only")
        assert (result.returncode, result.stdout) == (0, "from host\nread-only\n"), \
            result.stderr
        assert (shared / "out.txt").read_text() == "out\n"

    def test_tmpfs_mounts_a_tmpfs(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        result = moorage(rd.address, "run", "--rm", "--net", "none", "--tmpfs",
                         "/scratch:size=1m", "--rootfs", str(rootfs), "busybox", "sh", "-c",
                         "grep ' /scratch ' /proc/mounts")
        assert result.returncode == 0, result.stderr
        fields = result.stdout.split()
        assert fields[2] == "tmpfs" and "size=1024k" in fields[3] and "noexec" in fields[3]


class TestDaemonSidePolicies:
    def test_detached_rm_leaves_nothing_after_exit(self, rd: RuntimeDaemon,
                                                   rootfs: Path) -> None:
        result = moorage(rd.address, "run", "-d", "--rm", "--name", "brief", "--net", "none",
                         "--rootfs", str(rootfs), "busybox", "sh", "-c", "sleep 0.3")
        assert (result.returncode, result.stdout) == (0, "brief\n"), result.stderr
        wait_until(lambda: rd.client().containers() == [] and rd.client().tasks() == [],
                   what="the daemon to remove the container")
        assert leftovers(rd, "default", "brief") == []

    def test_on_failure_2_restarts_twice_then_stays_stopped(self, rd: RuntimeDaemon,
                                                            rootfs: Path) -> None:
        created(rd, rootfs, "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c",
                "exit 3")
        ok(rd, "start", "flaky")
        wait_until(lambda: labels(rd, "flaky").get("moorage/restart.count") == "2"
                   and status(rd, "flaky") == "exited", what="two restarts")
        time.sleep(1.5)  # longer than the next backoff: no third restart
        assert labels(rd, "flaky")["moorage/restart.count"] == "2"
        assert ok(rd, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                  "flaky") == "exited 3\n"

    def test_on_failure_leaves_a_clean_exit_alone(self, rd: RuntimeDaemon,
                                                  rootfs: Path) -> None:
        created(rd, rootfs, "fine", "--restart", "on-failure", "busybox", "true")
        ok(rd, "start", "fine")
        wait_until(lambda: status(rd, "fine") == "exited", what="exit")
        time.sleep(0.5)
        assert "moorage/restart.count" not in labels(rd, "fine")
        assert status(rd, "fine") == "exited"

    def test_always_survives_a_daemon_crash_and_a_manual_stop_ends_it(
            self, rd: RuntimeDaemon, rootfs: Path) -> None:
        created(rd, rootfs, "keeper", "--restart", "always", "busybox", *SLEEPER)
        ok(rd, "start", "keeper")
        first = int(ok(rd, "inspect", "-f", "{{.State.Pid}}", "keeper"))
        rd.kill()
        # The container dies while the daemon is down: its exit waits on disk.
        os.kill(first, signal.SIGKILL)
        rd.restart()
        wait_until(lambda: status(rd, "keeper") == "running"
                   and int(ok(rd, "inspect", "-f", "{{.State.Pid}}", "keeper")) != first,
                   what="the restart after the daemon's")
        assert ok(rd, "stop", "keeper") == "keeper\n"
        time.sleep(1.0)
        assert status(rd, "keeper") == "exited"
        # A user's start clears the stop: the policy is back in force.
        ok(rd, "start", "keeper")
        pid = int(ok(rd, "inspect", "-f", "{{.State.Pid}}", "keeper"))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: status(rd, "keeper") == "running"
                   and int(ok(rd, "inspect", "-f", "{{.State.Pid}}", "keeper")) != pid,
                   what="the restart after SIGKILL")
        assert ok(rd, "rm", "-f", "keeper") == "keeper\n"
        time.sleep(0.5)
        assert rd.client().containers() == []


    def test_unless_stopped_restarts_a_crash_but_not_after_a_stop_or_a_daemon_restart(
            self, rd: RuntimeDaemon, rootfs: Path) -> None:
        created(rd, rootfs, "steady", "--restart", "unless-stopped", "busybox", *SLEEPER)
        ok(rd, "start", "steady")
        pid = int(ok(rd, "inspect", "-f", "{{.State.Pid}}", "steady"))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: status(rd, "steady") == "running"
                   and int(ok(rd, "inspect", "-f", "{{.State.Pid}}", "steady")) != pid,
                   what="the restart after SIGKILL")
        assert ok(rd, "stop", "steady") == "steady\n"
        # Unlike always, a stopped unless-stopped container stays down across the daemon's
        # own restart.
        rd.kill()
        rd.restart()
        time.sleep(1.5)
        assert status(rd, "steady") == "exited"
        assert ok(rd, "rm", "steady") == "steady\n"

    def test_restart_no_leaves_a_failed_container_stopped(self, rd: RuntimeDaemon,
                                                          rootfs: Path) -> None:
        created(rd, rootfs, "once", "--restart", "no", "busybox", "sh", "-c", "exit 7")
        ok(rd, "start", "once")
        wait_until(lambda: status(rd, "once") == "exited", what="exit")
        time.sleep(0.5)
        assert "moorage/restart.count" not in labels(rd, "once")
        assert ok(rd, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                  "once") == "exited 7\n"


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDaemon]:
    """Daemons for one class's tests (see :class:`SharedDaemon`)."""
    require_runtime_host()
    shared = SharedDaemon(tmp_path_factory, CONFIG)
    yield shared
    shared.close()


class TestBadValues:
    @pytest.fixture
    def rd(self, shared: SharedDaemon) -> RuntimeDaemon:
        """A daemon as a fresh one is (these refusals change nothing), shared by the class."""
        return shared.daemon()

    @pytest.mark.parametrize(("flags", "named"), [
        (("--restart", "sometimes"), "--restart 'sometimes'"),
        (("--restart", "on-failure:x"), "--restart 'on-failure:x'"),
        (("--restart", "always", "--rm"), "--restart 'always' and --rm"),
        (("--pull", "often"), "--pull 'often'"),
        (("-p", "80:http"), "-p '80:http'"),
        (("-p", "99999:80"), "-p '99999:80'"),
        (("-p", "8080:80/sctp"), "-p '8080:80/sctp'"),
        (("-p", "nowhere:8080:80"), "-p 'nowhere:8080:80'"),
        (("-v", "/no-such-dir-xyz:/data"), "-v '/no-such-dir-xyz:/data'"),
        (("-v", "/tmp:data"), "-v '/tmp:data'"),
        (("-v", "/tmp:/data:bogus"), "-v '/tmp:/data:bogus'"),
        (("-v", "just!name:/data"), "-v 'just!name:/data'"),
        (("--tmpfs", "scratch"), "--tmpfs 'scratch'"),
    ])
    def test_bad_values_are_125_naming_the_value_and_change_nothing(
            self, rd: RuntimeDaemon, rootfs: Path, flags: tuple[str, ...], named: str) -> None:
        for verb in ("run", "create"):
            result = moorage(rd.address, verb, *flags, "--rootfs", str(rootfs), "busybox",
                             "true")
            assert result.returncode == 125, (verb, result.stderr)
            assert named in result.stderr
        assert rd.client().containers() == []
