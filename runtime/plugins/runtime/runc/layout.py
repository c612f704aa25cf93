"""Where a task's files live, and the records written there (atomically and durably).

Two trees per task, as containerd splits ``work`` from the bundle:

* the **bundle** ``<state>/<ns>/<id>/`` (volatile, tmpfs): ``config.json``, the
  ``rootfs`` mount point, and the monitor's fifos, pid file and attach socket;
  execs get ``execs/<exec-id>/`` below it;
* the **record** ``<root>/<ns>/<id>/`` (persistent): ``task.json``, the
  monitor's ``exit`` and ``oom`` files, our ``exit.json`` and the ``log``;
  execs get ``execs/<exec-id>/`` with ``exec.json``.

Everything that must survive a crash is written to a temporary file, synced,
renamed over the target and the directory synced: a reader sees the old or
the new record, never half of one.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from runtime.plugins.snapshots.api import Mount

__all__ = [
    "ExitRecord",
    "ProcessPaths",
    "ProcessRecord",
    "TaskPaths",
    "TaskRecord",
    "read_record",
    "write_durably",
    "write_record",
]

S = TypeVar("S", bound=msgspec.Struct)


class ProcessRecord(msgspec.Struct, kw_only=True):
    """What the daemon must remember about a process to re-attach to it.

    Attributes:
        id: The exec id, ``""`` for the init process.
        pid: The process's host pid (0 until the runtime created it).
        monitor_pid: The conmon monitor's pid.
        monitor_start: The monitor's start time (clock ticks since boot), so a
            recycled pid is never mistaken for it.
        terminal: Whether the process has a pseudo-terminal.
        stdin: Whether its stdin is kept open for attaching.
        started: Whether the user process has been started.
        spec: The OCI process spec of an exec.
        created_at: When it was added.
    """

    id: str = ""
    pid: int = 0
    monitor_pid: int = 0
    monitor_start: int = 0
    terminal: bool = False
    stdin: bool = False
    started: bool = False
    spec: dict[str, Any] | None = None
    created_at: datetime | None = None


class TaskRecord(msgspec.Struct, kw_only=True):
    """``task.json``: the task as a whole.

    Attributes:
        namespace: The task's namespace.
        container_id: Its container.
        runtime: The runtime plugin that created it.
        state: ``creating`` until the runtime created it, then ``created``.
        rootfs: The mounts on ``<bundle>/rootfs``.
        cgroups_path: The spec's ``linux.cgroupsPath``.
        keep_cgroup_parents: Never remove the cgroups above the task's own (the spec's
            ``KEEP_CGROUP_PARENTS_ANNOTATION``).
        init: The init process.
        created_at: When the task was created.
        oom_published: OOM kills already reported as ``/tasks/oom``.
    """

    namespace: str
    container_id: str
    runtime: str
    state: str = "creating"
    rootfs: list[Mount] = msgspec.field(default_factory=list)
    cgroups_path: str = ""
    keep_cgroup_parents: bool = False
    init: ProcessRecord = msgspec.field(default_factory=ProcessRecord)
    created_at: datetime | None = None
    oom_published: int = 0


class ExitRecord(msgspec.Struct, kw_only=True):
    """``exit.json``: how a process ended, and whether ``/tasks/exit`` went out."""

    exit_status: int
    exited_at: datetime
    published: bool = False


class ProcessPaths:
    """The files of one process (the init process or an exec)."""

    def __init__(self, bundle: Path, record: Path) -> None:
        self.bundle = bundle
        self.record = record

    @property
    def pid_file(self) -> Path:
        """Written by the runtime: the process's pid."""
        return self.bundle / "pid"

    @property
    def ctl(self) -> Path:
        """Conmon's control fifo (``1 <height> <width>`` resizes the terminal)."""
        return self.bundle / "ctl"

    @property
    def attach(self) -> Path:
        """Conmon's attach socket (SOCK_SEQPACKET)."""
        return self.bundle / "attach"

    @property
    def process_spec(self) -> Path:
        """An exec's OCI process spec, as handed to ``runc exec --process``."""
        return self.bundle / "process.json"

    @property
    def monitor_pid_file(self) -> Path:
        """Written by conmon: its own pid."""
        return self.record / "conmon.pid"

    @property
    def monitor_exit(self) -> Path:
        """Written by conmon when the process exits: the exit status."""
        return self.record / "exit"

    @property
    def oom(self) -> Path:
        """Created by conmon when the OOM killer struck the process's cgroup."""
        return self.record / "oom"

    @property
    def exit_record(self) -> Path:
        """Our :class:`ExitRecord`."""
        return self.record / "exit.json"

    @property
    def log(self) -> Path:
        """The output, in the Kubernetes ``<time> <stream> <P|F> <text>`` format."""
        return self.record / "log"


class TaskPaths:
    """The two directory trees of one task (see the module docstring)."""

    def __init__(self, state: Path, root: Path, namespace: str, container_id: str) -> None:
        self.bundle = state / namespace / container_id
        self.record = root / namespace / container_id
        self.init = ProcessPaths(self.bundle, self.record)

    @property
    def rootfs(self) -> Path:
        """Where the root filesystem is mounted."""
        return self.bundle / "rootfs"

    @property
    def config(self) -> Path:
        """The OCI spec."""
        return self.bundle / "config.json"

    @property
    def task_file(self) -> Path:
        """The :class:`TaskRecord`."""
        return self.record / "task.json"

    def exec(self, exec_id: str) -> ProcessPaths:
        """The files of exec ``exec_id``."""
        return ProcessPaths(self.bundle / "execs" / exec_id, self.record / "execs" / exec_id)

    def exec_file(self, exec_id: str) -> Path:
        """The exec's :class:`ProcessRecord`."""
        return self.record / "execs" / exec_id / "exec.json"

    def exec_ids(self) -> list[str]:
        """Exec ids that have a record, sorted."""
        execs = self.record / "execs"
        if not execs.is_dir():
            return []
        return sorted(p.name for p in execs.iterdir() if (p / "exec.json").is_file())


def write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    ``sync=False`` skips both fsyncs: the replacement is still atomic for
    readers and survives a crash of the daemon (the page cache outlives it),
    but a power loss may leave the old content, or none. That is enough for
    whatever dies with the host anyway: bundles, the records of tasks that a
    reboot ends (recovery removes a record it cannot read) and their exits.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not sync:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_record(path: Path, record: msgspec.Struct, *, sync: bool = True) -> None:
    """Write a record as JSON with :func:`write_durably`."""
    write_durably(path, msgspec.json.encode(record), sync=sync)


def read_record(path: Path, type_: type[S]) -> S | None:
    """The record at ``path``, or ``None`` if it is missing or unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=type_)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
