"""``moorage run``, ``tasks``, ``logs`` and ``containers`` as a user types them (subprocesses).

The root filesystem is a plain busybox directory passed with the hidden ``--rootfs``
option, so these tests need no image service.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import tarfile
import termios
import time
from pathlib import Path

import pytest

from tests.fixtures.images import ImageLayout
from tests.plugins.runtime.helpers import RuntimeDaemon, leftovers, moorage

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root


def run(rd: RuntimeDaemon, rootfs: Path, *args: str, input: str | None = None,
        flags: tuple[str, ...] = ("--rm",)) -> subprocess.CompletedProcess[str]:
    return moorage(rd.address, "run", *flags, "--rootfs", str(rootfs), "busybox", *args,
                   input=input)


class TestRun:
    def test_exit_code_and_output_reach_the_terminal(self, rd: RuntimeDaemon,
                                                     rootfs: Path) -> None:
        result = run(rd, rootfs, "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
        assert (result.returncode, result.stdout, result.stderr) == (7, "to-out\n", "to-err\n")
        api = rd.client()
        assert api.containers() == []
        assert api.tasks() == []

    def test_output_also_reaches_the_log(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        result = run(rd, rootfs, "sh", "-c", "echo logged; echo warned >&2; exit 3",
                     flags=("--name", "keep"))
        assert (result.returncode, result.stdout) == (3, "logged\n")
        logs = moorage(rd.address, "logs", "keep")
        assert (logs.returncode, logs.stdout, logs.stderr) == (0, "logged\n", "warned\n")
        listed = moorage(rd.address, "tasks", "ls", "-q")
        assert listed.stdout.split() == ["keep"]
        assert moorage(rd.address, "tasks", "rm", "keep").returncode == 0
        assert moorage(rd.address, "containers", "rm", "keep").returncode == 0
        assert leftovers(rd, "default", "keep") == []

    @pytest.mark.parametrize(("command", "code", "message"), [
        ("no-such-command", 127, 'exec: "no-such-command": executable file not found'),
        ("/etc/passwd", 126, 'exec: "/etc/passwd": permission denied'),
    ])
    def test_command_that_cannot_run(self, rd: RuntimeDaemon, rootfs: Path, command: str,
                                     code: int, message: str) -> None:
        """127 when the command is not found, 126 when it cannot be executed; cleaned up."""
        result = run(rd, rootfs, command)
        assert result.returncode == code
        assert message in result.stderr
        assert rd.client().containers() == []

    def test_moorage_failure_is_125(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        result = run(rd, rootfs, "true", flags=("--rm", "--user", "nobody-here"))
        assert result.returncode == 125
        assert "unable to find user 'nobody-here'" in result.stderr
        assert rd.client().containers() == []

    def test_interactive_stdin(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        result = run(rd, rootfs, "sh", "-c", "while read l; do echo \"got $l\"; done; exit 4",
                     flags=("--rm", "-i"), input="one\ntwo\n")
        assert (result.returncode, result.stdout) == (4, "got one\ngot two\n")

    def test_options_reach_the_spec(self, rd: RuntimeDaemon, rootfs: Path,
                                    tmp_path: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir()
        (shared / "in.txt").write_text("from host\n")
        result = run(rd, rootfs, "sh", "-c",
                     'id -u; pwd; echo "$GREETING"; cat /data/in.txt; hostname; '
                     "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
                     "|| cat /sys/fs/cgroup/memory.max; touch /x 2>/dev/null || echo ro",
                     flags=("--rm", "--user", "1000:1000", "-w", "/tmp", "-e", "GREETING=hi",
                            "--mount", f"type=bind,src={shared},dst=/data,options=ro",
                            "--hostname", "boat", "--memory", "64m", "--read-only",
                            "--cpus", "0.5"))
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"1000\n/tmp\nhi\nfrom host\nboat\n{64 << 20}\nro\n"

    def test_detached_kill_wait_and_remove(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        result = run(rd, rootfs, "sh", "-c", "trap 'exit 42' TERM; while true; do sleep 0.1; done",
                     flags=("-d", "--name", "bg"))
        assert (result.returncode, result.stdout) == (0, "bg\n")
        assert moorage(rd.address, "tasks", "ps", "-q", "bg").stdout.strip() != ""
        exec_result = moorage(rd.address, "tasks", "exec", "bg", "sh", "-c", "echo hi; exit 5")
        assert (exec_result.returncode, exec_result.stdout) == (5, "hi\n")
        missing = moorage(rd.address, "tasks", "exec", "bg", "no-such-command")
        assert missing.returncode == 127
        assert moorage(rd.address, "tasks", "pause", "bg").returncode == 0
        assert "paused" in moorage(rd.address, "tasks", "ls").stdout
        assert moorage(rd.address, "tasks", "resume", "bg").returncode == 0
        metrics = moorage(rd.address, "tasks", "metrics", "--format", "json", "bg")
        assert '"pids_current"' in metrics.stdout
        assert moorage(rd.address, "tasks", "kill", "-s", "TERM", "bg").returncode == 0
        waited = moorage(rd.address, "tasks", "wait", "bg")
        assert waited.returncode == 42
        assert moorage(rd.address, "containers", "rm", "-f", "bg").returncode == 0
        assert leftovers(rd, "default", "bg") == []

    def test_logs_follow_streams_until_exit(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        run(rd, rootfs, "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.3; done",
            flags=("-d", "--name", "f"))
        follow = moorage(rd.address, "logs", "-f", "f")
        assert (follow.returncode, follow.stdout) == (0, "1\n2\n3\n")
        assert moorage(rd.address, "containers", "rm", "-f", "f").returncode == 0

    def test_containers_create_then_tasks_start(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        created = moorage(rd.address, "containers", "create", "--rootfs", str(rootfs),
                          "busybox", "c1", "sh", "-c", "echo started; exit 6")
        assert (created.returncode, created.stdout) == (0, "c1\n")
        assert moorage(rd.address, "containers", "ls", "-q").stdout == "c1\n"
        # Under the test daemon's own cgroup parent: see tests/fixtures/daemon.py.
        assert f'"cgroupsPath": "{rd.cgroup_parent}/default/c1"' in moorage(
            rd.address, "containers", "info", "c1").stdout
        started = moorage(rd.address, "tasks", "start", "c1")
        assert (started.returncode, started.stdout) == (6, "started\n")
        assert moorage(rd.address, "tasks", "rm", "c1").returncode == 0
        assert moorage(rd.address, "containers", "rm", "c1").returncode == 0


def _read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {needle!r} in terminal output: {buf!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_interactive_terminal_with_resize(rd: RuntimeDaemon, rootfs: Path) -> None:
    """``run -t -i``: a usable shell in a raw terminal that follows window resizes."""
    argv = [sys.executable, "-m", "runtime.cli.main", "--address", rd.address, "run", "--rm",
            "-t", "-i", "--rootfs", str(rootfs), "busybox", "sh"]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child process
        os.execv(sys.executable, argv)
    try:
        _set_size(fd, 30, 100)
        _read_until(fd, b"# ")
        os.write(fd, b"stty size\n")
        assert b"30 100" in _read_until(fd, b"30 100")
        # Resizing our terminal sends SIGWINCH to the client, which resizes the container's.
        _set_size(fd, 40, 120)
        time.sleep(0.3)
        os.write(fd, b"stty size\n")
        assert b"40 120" in _read_until(fd, b"40 120")
        os.write(fd, b"exit 3\n")
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                break
            if time.monotonic() > deadline:
                pytest.fail("moorage run -t -i did not exit")
            time.sleep(0.05)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 3
    assert rd.client().containers() == []


def test_run_an_imported_image(rd: RuntimeDaemon, busybox_layout: ImageLayout,
                               tmp_path: Path) -> None:
    """``run IMAGE``: the image's rootfs is unpacked, a snapshot prepared and removed with --rm."""
    archive = tmp_path / "busybox.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(busybox_layout.path, arcname=".")
    imported = moorage(rd.address, "images", "import", str(archive))
    assert imported.returncode == 0, imported.stderr
    name = imported.stdout.split()[0]
    result = moorage(rd.address, "run", "--rm", "--name", "img1", name, "sh", "-c",
                     "head -n1 /etc/passwd; exit 3")
    # /etc/passwd is the image's (/etc/hostname is the container's own, bind-mounted).
    assert (result.returncode, result.stdout, result.stderr) == (
        3, "root:x:0:0:root:/root:/bin/sh\n", "")
    api = rd.client()
    assert api.containers() == []
    assert [s.kind for s in api.snapshots("overlayfs")] == ["committed"]
    assert leftovers(rd, "default", "img1") == []
