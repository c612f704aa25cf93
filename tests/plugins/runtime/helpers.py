"""Shared by the runtime and ``moorage run`` tests: a busybox rootfs, a daemon, an event log.

Everything here cleans up after itself even when a test fails half-way: tasks are
killed and deleted through the API, then whatever is still mounted under the state
directory is unmounted, leftover runtime containers are deleted and monitors started
for this daemon are killed (by pid), before the daemon's directories are removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.client import Client
from runtime.core.errors import MoorageError
from tests.fixtures.daemon import Daemon
from tests.fixtures.daemon import cgroup_dirs as daemon_cgroup_dirs
from tests.fixtures.images import BUSYBOX_SOURCE, busybox_layer
from tests.fixtures.system import require_binary, require_root, unavailable

__all__ = [
    "EventLog",
    "RuntimeDaemon",
    "SharedDaemon",
    "command_lines",
    "footprint",
    "leftovers",
    "make_rootfs",
    "moorage",
    "requests_to",
    "require_runtime_host",
    "wait_until",
]

#: Applets beyond the fixture layer's that the tests use.
EXTRA_APPLETS = ("stty", "tty", "seq", "yes", "dd", "timeout", "mkfifo", "usleep")

DEFAULT_CONFIG = """
[plugins."runtime.runc"]
oom_check_interval = 0.2
exit_publish_grace = 30.0
"""


def require_runtime_host() -> None:
    """Root, busybox, runc and conmon, or skip (fail under CI)."""
    require_root()
    require_binary("runc")
    require_binary("conmon")
    if not BUSYBOX_SOURCE.is_file():
        unavailable(f"{BUSYBOX_SOURCE} missing (apt-get install busybox-static)")


def make_rootfs(path: Path) -> Path:
    """Unpack the fixture busybox layer (plus :data:`EXTRA_APPLETS`) into ``path``."""
    layer = busybox_layer()
    for applet in EXTRA_APPLETS:
        layer.symlink(f"bin/{applet}", "busybox")
    path.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(layer.tar_bytes())) as tar:
        tar.extractall(path, filter="tar")
    return path


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")


class EventLog:
    """Collects a namespace's events in a background thread, from subscription onwards."""

    def __init__(self, client: Client, *filters: str) -> None:
        # open() returns once the server has subscribed: no event after this is missed.
        self._response = client.open("GET", "/v1/events", query={"filter": list(filters)},
                                     timeout=None)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._response.iter_lines():
                if line.strip():
                    with self._lock:
                        self.events.append(json.loads(line))
        except OSError:
            pass

    def topics(self, container_id: str | None = None) -> list[str]:
        """Topics seen so far, optionally only those about ``container_id``."""
        with self._lock:
            return [e["topic"] for e in self.events
                    if container_id is None
                    or container_id in (e["event"].get("container_id"), e["event"].get("id"))]

    def find(self, topic: str, **fields: Any) -> dict[str, Any] | None:
        """The first event of ``topic`` whose payload has ``fields``."""
        with self._lock:
            for event in self.events:
                if event["topic"] == topic and all(
                        event["event"].get(k) == v for k, v in fields.items()):
                    return dict(event["event"])
        return None

    def wait_for(self, topic: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """Block until an event of ``topic`` with ``fields`` arrived."""
        found: dict[str, Any] = wait_until(lambda: self.find(topic, **fields), timeout,
                                           f"event {topic} {fields}")
        return found

    def close(self) -> None:
        """Stop listening."""
        self._response.close()


class RuntimeDaemon:
    """A :class:`Daemon` for runtime tests with thorough cleanup.

    Args:
        tmp_path: The test's directory.
        config: TOML for the daemon (default: fast OOM checks, long exit grace).
    """

    def __init__(self, tmp_path: Path, config: str = DEFAULT_CONFIG) -> None:
        self.daemon = Daemon(tmp_path / "daemon", config)
        self.daemon.start()
        self._event_logs: list[EventLog] = []

    def events(self, *filters: str, namespace: str = "default") -> EventLog:
        """Start collecting events (closed with the daemon)."""
        log = EventLog(self.client(namespace), *filters)
        self._event_logs.append(log)
        return log

    @property
    def address(self) -> str:
        """The API address."""
        return self.daemon.address

    @property
    def state(self) -> Path:
        """The daemon's state directory."""
        return self.daemon.state

    @property
    def root(self) -> Path:
        """The daemon's persistent root."""
        return self.daemon.root

    @property
    def cgroup_parent(self) -> str:
        """The cgroup this daemon's containers go under (its own, see the Daemon fixture)."""
        return self.daemon.cgroup_parent

    def client(self, namespace: str = "default") -> Client:
        """A client with a bounded socket timeout (no test waits forever)."""
        return Client(self.address, namespace=namespace, timeout=60.0)

    def restart(self) -> None:
        """Start the daemon again on the same root and state (after :meth:`kill`)."""
        self.daemon.start()

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would."""
        self.daemon.kill()

    def close(self) -> None:
        """Remove every task, mount, runtime container and monitor; stop the daemon."""
        for log in self._event_logs:
            log.close()
        try:
            if self.daemon.running:
                self._remove_through_api()
        finally:
            try:
                self.daemon.stop()
            except Exception:
                if self.daemon.running:
                    self.daemon.kill()
            self._remove_leftovers()
            self.daemon.close()

    def _remove_through_api(self) -> None:
        for namespace in [ns.name for ns in self.client().namespaces()]:
            api = self.client(namespace)
            for task in api.tasks():
                try:
                    if task.status in ("running", "paused", "created"):
                        api.kill_task(task.container_id, "KILL", all=True)
                        if task.status == "paused":
                            api.resume_task(task.container_id)
                        api.wait_task(task.container_id, timeout=20)
                    api.delete_task(task.container_id)
                except MoorageError:
                    pass
            for container in api.containers():
                with contextlib.suppress(MoorageError):
                    api.delete_container(container.id)

    def _remove_leftovers(self) -> None:
        state = str(self.state)
        for mountpoint in reversed(mounts_under(state)):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        for runtime_root in self.state.glob("*-root/*"):
            binary = runtime_root.parent.name.removesuffix("-root")
            listed = subprocess.run([binary, "--root", str(runtime_root), "list", "-q"],
                                    capture_output=True, text=True, check=False)
            for container_id in listed.stdout.split():
                subprocess.run([binary, "--root", str(runtime_root), "delete", "-f",
                                container_id], check=False, capture_output=True)
        for pid in monitor_pids(state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def footprint(rd: RuntimeDaemon) -> tuple[Any, ...]:
    """What a test could leave in a daemon: records of every namespace, volumes, networks,
    mounts under its state directory."""
    api = rd.client()
    records = {}
    for namespace in sorted(ns.name for ns in api.namespaces()):
        scoped = rd.client(namespace)
        records[namespace] = (
            sorted(c.id for c in scoped.containers()),
            sorted(t.container_id for t in scoped.tasks()),
            sorted(i.name for i in scoped.images()),
        )
    volumes = sorted(v["name"] for v in api.call("GET", "/v1/volumes", list))
    networks = sorted(n["name"] for n in api.call("GET", "/v1/networks", list))
    return records, volumes, networks, mounts_under(str(rd.state))


class SharedDaemon:
    """One :class:`RuntimeDaemon` for tests that each must leave nothing behind.

    Tests of refusals (a bad flag is 125 and creates nothing) need a daemon but change
    nothing in it; starting one per test is most of their time. :meth:`daemon` hands
    each test a daemon whose :func:`footprint` is that of a fresh one: the shared one
    while it is, else (a test before left something, or stopped it) a new one, so no
    test sees what another did.

    Args:
        tmp_path_factory: Where each daemon gets its directory.
        config: TOML for the daemons.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory,
                 config: str = DEFAULT_CONFIG) -> None:
        self._factory = tmp_path_factory
        self._config = config
        self._current: RuntimeDaemon | None = None
        self._fresh: tuple[Any, ...] = ()

    def daemon(self) -> RuntimeDaemon:
        """A running daemon in the state of a fresh one."""
        current = self._current
        if current is not None and current.daemon.running:
            with contextlib.suppress(MoorageError, OSError):
                if footprint(current) == self._fresh:
                    return current
        self.close()
        current = RuntimeDaemon(self._factory.mktemp("shared"), self._config)
        self._current = current
        self._fresh = footprint(current)
        return current

    def close(self) -> None:
        """Close the current daemon (a later :meth:`daemon` starts another)."""
        current, self._current = self._current, None
        if current is not None:
            current.close()


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint == prefix or mountpoint.startswith(prefix.rstrip("/") + "/"):
                found.append(mountpoint)
    return found


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of every process on the host that is still there to read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(entry.name), argv


def monitor_pids(state: str) -> list[int]:
    """Pids of conmon processes whose command line names ``state`` (ours only)."""
    pids = []
    for pid, argv in command_lines():
        if argv and argv[0].endswith(b"conmon") and any(state.encode() in a for a in argv):
            pids.append(pid)
    return pids


def cgroup_dirs(rd: RuntimeDaemon, namespace: str, container_id: str) -> list[Path]:
    """Existing cgroup directories of a task, in every hierarchy (under rd's cgroup parent)."""
    return daemon_cgroup_dirs(f"{rd.cgroup_parent}/{namespace}/{container_id}")


def leftovers(rd: RuntimeDaemon, namespace: str, container_id: str) -> list[str]:
    """What a deleted task left behind: mounts, cgroups, runtime state, monitors, files."""
    found: list[str] = []
    bundle = rd.state / "runtime.runc" / namespace / container_id
    found += [f"mount {m}" for m in mounts_under(str(bundle))]
    found += [f"cgroup {d}" for d in cgroup_dirs(rd, namespace, container_id)]
    runtime_root = rd.state / "runc-root" / namespace
    state = subprocess.run(["runc", "--root", str(runtime_root), "state", container_id],
                           capture_output=True, check=False)
    if state.returncode == 0:
        found.append(f"runc state of {container_id}")
    if bundle.exists():
        found.append(f"bundle {bundle}")
    record = rd.root / "runtime.runc" / namespace / container_id
    if record.exists():
        found.append(f"record {record}")
    found += [f"monitor {pid}" for pid in monitor_pids(str(bundle) + "/")]
    return found


def moorage(address: str, *args: str, input: str | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the CLI against ``address``; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "--address", address, *args],
        input=input, capture_output=True, text=True, timeout=timeout, check=False,
    )


def requests_to(rd: RuntimeDaemon, route: str, method: str = "POST") -> float:
    """How many requests the daemon answered on ``route`` (its ``/v1/metrics`` counter)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = rd.client().open("GET", "/v1/metrics").read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "moorage_api_requests_total"
               and s.labels.get("route") == route and s.labels.get("method") == method)


def moorage_ok(rd: RuntimeDaemon, *args: str, input: str | None = None) -> str:
    """Run the CLI against ``rd``, assert it succeeded; its stdout."""
    result = moorage(rd.address, *args, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout
