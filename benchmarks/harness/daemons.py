"""containerd and Moorage daemons with their own root, state and socket, started on demand."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.memory import rss_kib

__all__ = ["Containerd", "Moorage"]

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not come up; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


class _Daemon:
    name = ""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.socket = base / "s" / "sock"
        self.log = base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> None:
        """Block until the daemon answers."""
        assert self.proc is not None
        _wait_for(self.socket, self.proc, self.log)

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        for d in (self.root, self.state, self.socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                         start_new_session=True)
        self.ready()

    def write_config(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """The daemon's resident set."""
        return rss_kib(self.pid)

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if needed."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def wipe(self) -> None:
        """Remove root, state and the rest of the base directory (after stop)."""
        subprocess.run(["umount", "-R", str(self.state)], capture_output=True, check=False)
        for d in (self.root, self.state, self.base):
            shutil.rmtree(d, ignore_errors=True)


class Containerd(_Daemon):
    """Debian's containerd 1.6 with CRI disabled; driven with ``ctr``."""

    name = "containerd"

    def write_config(self) -> None:
        """A version 2 config of its own."""
        (self.base / "config.toml").write_text(
            "version = 2\n"
            f'root = "{self.root}"\nstate = "{self.state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[debug]\n  address = "{self.base / "s" / "debug.sock"}"\n'
        )

    def command(self) -> list[str]:
        """The containerd command line."""
        return ["containerd", "--config", str(self.base / "config.toml")]

    def cli(self, *args: str) -> list[str]:
        """A ``ctr`` command against this daemon in namespace ``bench``."""
        return ["ctr", "--address", str(self.socket), "--namespace", "bench", *args]

    def pull(self, ref: str) -> list[str]:
        """Pull (with unpack) over plain HTTP."""
        return self.cli("images", "pull", "--plain-http", ref)

    #: ``ctr run`` sets no seccomp filter unless asked, where Moorage's ``run``
    #: applies its default profile (as docker and nerdctl do); runc compiling and
    #: loading a filter costs about 10 ms of CPU per container (performance.md,
    #: entry 29), so both sides are measured with their default profile.
    run_flags = ("--seccomp",)

    def run_rm(self, ref: str, cid: str, *args: str) -> list[str]:
        """``ctr run --rm --seccomp``."""
        return self.cli("run", "--rm", *self.run_flags, ref, cid, *args)

    def run_detached(self, ref: str, cid: str, *args: str) -> list[str]:
        """``ctr run -d --seccomp``."""
        return self.cli("run", "-d", *self.run_flags, ref, cid, *args)

    def teardown(self, cid: str) -> list[list[str]]:
        """Kill, delete the task, delete the container."""
        return [self.cli("task", "kill", "-s", "SIGKILL", cid),
                self.cli("task", "rm", "-f", cid), self.cli("containers", "rm", cid)]

    def version(self) -> list[str]:
        """``ctr version``."""
        return self.cli("version")

    supervisor = "containerd-shim"


class Moorage(_Daemon):
    """This repository's daemon; driven with the ``moorage`` console script."""

    name = "moorage"

    def write_config(self) -> None:
        """A plugins.toml of its own."""
        (self.base / "plugins.toml").write_text(
            f'version = 1\nroot = "{self.root}"\nstate = "{self.state}"\n'
            f'[api]\naddress = "{self.socket}"\n'
        )

    def command(self) -> list[str]:
        """The daemon command line."""
        return [self.exe(), "daemon", "--config", str(self.base / "plugins.toml"),
                "--log-level", "warning"]

    #: Where the measured installation's scripts are (set by ``run.py``); ``None``: the
    #: console script next to this interpreter (the development install).
    bin_dir: Path | None = None

    @classmethod
    def exe(cls) -> str:
        """The ``moorage`` console script measured (skips any shell shim)."""
        candidate = (cls.bin_dir or Path(sys.executable).parent) / "moorage"
        return str(candidate) if candidate.exists() else shutil.which("moorage") or "moorage"

    @classmethod
    def python(cls) -> str:
        """The interpreter that console script runs."""
        candidate = (cls.bin_dir or Path(sys.executable).parent) / "python"
        return str(candidate) if candidate.exists() else sys.executable

    def cli(self, *args: str) -> list[str]:
        """A ``moorage`` command against this daemon in namespace ``bench``."""
        return [self.exe(), "--address", f"unix://{self.socket}", "-n", "bench", *args]

    def pull(self, ref: str) -> list[str]:
        """Pull (with unpack) over plain HTTP."""
        return self.cli("images", "pull", "--plain-http", "--quiet", ref)

    # ``--net none``: ``ctr run`` sets up no network either (its containers get a
    # new, unconfigured network namespace); Moorage's default, ``bridge``, runs
    # the CNI bridge and IPAM plugins for every container.

    def run_rm(self, ref: str, cid: str, *args: str) -> list[str]:
        """``moorage run --rm --net none``."""
        return self.cli("run", "--rm", "--net", "none", "--name", cid, ref, *args)

    def run_detached(self, ref: str, cid: str, *args: str) -> list[str]:
        """``moorage run -d --net none``."""
        return self.cli("run", "-d", "--net", "none", "--name", cid, ref, *args)

    def teardown(self, cid: str) -> list[list[str]]:
        """Kill, delete the task, delete the container."""
        return [self.cli("tasks", "kill", "-s", "SIGKILL", cid),
                self.cli("tasks", "rm", "-f", cid), self.cli("containers", "rm", cid)]

    def version(self) -> list[str]:
        """``moorage version``."""
        return self.cli("version")

    supervisor = "conmon"


def env_without_proxies() -> dict[str, str]:
    """The environment minus HTTP proxies (the registry is on loopback)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
