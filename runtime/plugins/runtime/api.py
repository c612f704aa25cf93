"""The runtime contract: task states, events, request bodies and the Runtime protocol.

A *task* is a container's running form: its init process plus any *exec*
processes. It is addressed by the container id within a namespace; an exec by
``(container id, exec id)``. Status transitions follow containerd's runc shim::

    created --start--> running --pause--> paused --resume--> running
    created | running | paused --(process exits)--> stopped
    created | stopped --delete--> (gone)

Anything else raises :class:`~runtime.core.errors.FailedPrecondition`.
Events are published in the order create, start, (oom), exit, delete; for an
exec: exec-added, exec-started, exit. An exit is recorded on disk before it is
published, so a daemon restart never loses one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from runtime.plugins.snapshots.api import Mount

__all__ = [
    "STDERR",
    "STDOUT",
    "UNKNOWN_EXIT_STATUS",
    "AttachStream",
    "CreateTaskRequest",
    "ExecRequest",
    "ExitStatus",
    "ImageConfig",
    "KillRequest",
    "LogEntry",
    "ProcessInfo",
    "ProcessRequest",
    "ProcessState",
    "ResizeRequest",
    "Runtime",
    "SpecMount",
    "SpecOptions",
    "Status",
    "TaskCreate",
    "TaskDelete",
    "TaskExecAdded",
    "TaskExecStarted",
    "TaskExit",
    "TaskIO",
    "TaskMetrics",
    "TaskOOM",
    "TaskPaused",
    "TaskResumed",
    "TaskStart",
    "TaskState",
    "UpdateTaskRequest",
    "runtime_plugin_id",
]

#: The exit status reported when the real one cannot be known (containerd's value).
UNKNOWN_EXIT_STATUS = 255
#: Stream tags of attach frames (conmon's numbering): standard output and error.
STDOUT = 2
STDERR = 3


class Status(StrEnum):
    """Where a task or process stands."""

    CREATED = "created"  # runtime created it; the user process has not started
    RUNNING = "running"
    PAUSED = "paused"  # frozen by the freezer cgroup
    STOPPED = "stopped"  # exited; the exit status is known
    UNKNOWN = "unknown"


# -- spec inputs --------------------------------------------------------------


class ImageConfig(msgspec.Struct, kw_only=True, rename="pascal"):
    """The ``config`` object of an OCI image configuration, in its own spelling.

    Fields the spec does not use (``ExposedPorts``, ``Volumes``...) are ignored;
    Docker writes ``null`` for unset ones.

    Attributes:
        entrypoint: ``Entrypoint``.
        cmd: ``Cmd``.
        env: ``Env`` as ``KEY=VALUE`` strings.
        working_dir: ``WorkingDir``.
        user: ``User`` (``name``, ``uid``, ``uid:gid``, ``name:group``).
        stop_signal: ``StopSignal``.
        labels: ``Labels``.
    """

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] | None = None
    working_dir: str | None = None
    user: str | None = None
    stop_signal: str | None = None
    labels: dict[str, str] | None = None


class SpecMount(msgspec.Struct, kw_only=True):
    """An extra mount in the container (``--mount type=bind,src=...,dst=...``)."""

    destination: str
    source: str = ""
    type: str = "bind"
    options: list[str] = msgspec.field(default_factory=list)


class SpecOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a user may ask of the generated OCI spec; applied after the image config.

    Attributes:
        args: Replaces the image's ``Cmd`` (kept after its ``Entrypoint``).
        entrypoint: Replaces the image's ``Entrypoint`` when not ``None``.
        env: ``KEY=VALUE`` strings, overriding the image's.
        cwd: Working directory (default: the image's, else ``/``).
        user: ``uid[:gid]`` or ``name[:group]``; names are looked up in the
            root filesystem's ``/etc/passwd`` and ``/etc/group`` at task create.
        hostname: Host name inside the container (default: the container id).
        mounts: Extra mounts (bind mounts of host paths).
        readonly_rootfs: Mount the root filesystem read-only.
        privileged: All capabilities, all devices, no masked paths, no seccomp filter.
        seccomp: The seccomp profile: ``""`` the default one (see
            :mod:`runtime.pkg.seccomp`), ``"unconfined"`` none, else a profile's
            JSON text (Docker's shape or an OCI ``linux.seccomp`` object).
        terminal: Allocate a pseudo-terminal for the init process.
        cpus: CPUs of quota (``1.5`` -> quota 150000 per 100000 µs period).
        memory: Memory limit in bytes (0: none).
        pids_limit: Maximum number of processes (0: none).
        annotations: Extra OCI annotations.
    """

    args: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = msgspec.field(default_factory=list)
    cwd: str = ""
    user: str = ""
    hostname: str = ""
    mounts: list[SpecMount] = msgspec.field(default_factory=list)
    readonly_rootfs: bool = False
    privileged: bool = False
    seccomp: str = ""
    terminal: bool = False
    cpus: float = 0.0
    memory: int = 0
    pids_limit: int = 0
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


# -- states -------------------------------------------------------------------


class ProcessState(msgspec.Struct, kw_only=True):
    """A task's init process (``id == ""``) or one of its execs.

    Attributes:
        container_id: The task's container.
        id: The exec id, ``""`` for the init process.
        pid: Host pid of the process (0 before it exists).
        status: Created, running, paused or stopped.
        terminal: Whether it has a pseudo-terminal.
        stdin: Whether its stdin is open for attaching.
        exit_status: Exit code; ``128 + signal`` when killed by a signal.
        exited_at: When it exited.
    """

    container_id: str
    id: str = ""
    pid: int = 0
    status: Status = Status.UNKNOWN
    terminal: bool = False
    stdin: bool = False
    exit_status: int | None = None
    exited_at: datetime | None = None


class TaskState(ProcessState, kw_only=True):
    """A task: its init process plus where it lives and its execs.

    Attributes:
        runtime: The runtime plugin running it (``runtime.runc``).
        bundle: The OCI bundle directory.
        created_at: When the task was created.
        execs: The exec processes it holds.
    """

    runtime: str = ""
    bundle: str = ""
    created_at: datetime | None = None
    execs: list[ProcessState] = msgspec.field(default_factory=list)


class ExitStatus(msgspec.Struct, kw_only=True):
    """How a process ended (``GET /v1/tasks/{id}/wait``, task delete)."""

    container_id: str
    id: str = ""
    pid: int = 0
    exit_status: int = UNKNOWN_EXIT_STATUS
    exited_at: datetime | None = None


class ProcessInfo(msgspec.Struct, kw_only=True):
    """One process in the task's cgroup (``GET /v1/tasks/{id}/pids``)."""

    pid: int
    exec_id: str = ""


class TaskMetrics(msgspec.Struct, kw_only=True):
    """Resource usage read from the task's cgroup.

    Attributes:
        container_id: The task.
        timestamp: When the numbers were read.
        cgroup: ``v1``, ``v2`` or ``hybrid`` (v1 controllers plus a v2 tree).
        cpu_usage_usec: CPU time used, in microseconds.
        memory_usage_bytes: Memory charged now.
        memory_limit_bytes: The memory limit; ``None`` when unlimited.
        pids_current: Processes and threads now.
        pids_limit: The pids limit; ``None`` when unlimited.
        oom_kills: Processes killed by the OOM killer in this cgroup.
        io_read_bytes: Bytes read from block devices (page-cache hits not counted).
        io_write_bytes: Bytes written to block devices.
    """

    container_id: str
    timestamp: datetime
    cgroup: str = ""
    cpu_usage_usec: int = 0
    memory_usage_bytes: int = 0
    memory_limit_bytes: int | None = None
    pids_current: int = 0
    pids_limit: int | None = None
    oom_kills: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0


class LogEntry(msgspec.Struct, kw_only=True):
    r"""A piece of a process's output, one line of ``GET /v1/tasks/{id}/logs``.

    Attributes:
        time: When the runtime read it.
        stream: ``stdout`` or ``stderr``.
        data: The bytes as text (UTF-8, invalid bytes replaced); a complete
            line ends with ``\\n``.
    """

    time: datetime
    stream: str
    data: str


# -- events -------------------------------------------------------------------


class TaskIO(msgspec.Struct, kw_only=True):
    """How a task's stdio is wired."""

    stdin: bool = False
    terminal: bool = False
    log: str = ""


class TaskCreate(msgspec.Struct, kw_only=True):
    """Event ``/tasks/create``."""

    container_id: str
    bundle: str = ""
    rootfs: list[Mount] = msgspec.field(default_factory=list)
    io: TaskIO = msgspec.field(default_factory=TaskIO)
    pid: int = 0


class TaskStart(msgspec.Struct, kw_only=True):
    """Event ``/tasks/start``."""

    container_id: str
    pid: int = 0


class TaskExit(msgspec.Struct, kw_only=True):
    """Event ``/tasks/exit``; ``id`` is the exec id, or the container id for the init process."""

    container_id: str
    id: str = ""
    pid: int = 0
    exit_status: int = UNKNOWN_EXIT_STATUS
    exited_at: datetime | None = None


class TaskDelete(msgspec.Struct, kw_only=True):
    """Event ``/tasks/delete``."""

    container_id: str
    id: str = ""
    pid: int = 0
    exit_status: int = UNKNOWN_EXIT_STATUS
    exited_at: datetime | None = None


class TaskPaused(msgspec.Struct, kw_only=True):
    """Event ``/tasks/paused``."""

    container_id: str


class TaskResumed(msgspec.Struct, kw_only=True):
    """Event ``/tasks/resumed``."""

    container_id: str


class TaskExecAdded(msgspec.Struct, kw_only=True):
    """Event ``/tasks/exec-added``."""

    container_id: str
    exec_id: str


class TaskExecStarted(msgspec.Struct, kw_only=True):
    """Event ``/tasks/exec-started``."""

    container_id: str
    exec_id: str
    pid: int = 0


class TaskOOM(msgspec.Struct, kw_only=True):
    """Event ``/tasks/oom``: the kernel's OOM killer killed a process of the task."""

    container_id: str


# -- requests -----------------------------------------------------------------


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Request bodies refuse unknown fields."""


class CreateTaskRequest(_Body):
    """``POST /v1/tasks``.

    Attributes:
        container_id: The container to run.
        rootfs: Mounts making up the root filesystem (a snapshot's). Empty:
            the container's snapshot, else the spec's absolute ``root.path``.
        stdin: Keep the init process's stdin open for attaching.
        terminal: Override the spec's ``process.terminal``.
    """

    container_id: str
    rootfs: list[Mount] = msgspec.field(default_factory=list)
    stdin: bool = False
    terminal: bool | None = None


class KillRequest(_Body):
    """``POST /v1/tasks/{id}/kill``: ``signal`` as a number or name (``SIGTERM``, ``KILL``)."""

    signal: int | str = 15
    all: bool = False
    exec_id: str = ""


class ExecRequest(_Body):
    """``POST /v1/tasks/{id}/exec``: add a process; it runs once started.

    ``env`` adds to the container's environment; empty ``cwd`` and ``user``
    keep the container's.
    """

    exec_id: str
    args: list[str]
    env: list[str] = msgspec.field(default_factory=list)
    cwd: str = ""
    user: str = ""
    terminal: bool = False
    stdin: bool = False


class ProcessRequest(_Body):
    """A body naming one process: the init process when ``exec_id`` is empty."""

    exec_id: str = ""


class ResizeRequest(_Body):
    """``POST /v1/tasks/{id}/resize``: the new size of a process's terminal."""

    width: int
    height: int
    exec_id: str = ""


class UpdateTaskRequest(_Body):
    """``POST /v1/tasks/{id}/update``: OCI ``linux.resources`` to apply (partial)."""

    resources: dict[str, Any]


# -- the protocol ---------------------------------------------------------------


def runtime_plugin_id(name: str) -> str:
    """The ``runtime.<id>`` plugin id a container's runtime name refers to.

    ``runc``, ``runtime.runc`` and containerd's ``io.containerd.runc.v2`` all
    name ``runc``; ``crun`` and ``io.containerd.crun.v1``... name ``crun``.
    """
    if name.startswith("runtime."):
        return name[len("runtime.") :]
    if name.startswith("io.containerd."):
        # containerd's scheme: io.containerd.<runtime>.<version>.
        parts = name.split(".")
        return parts[2] if len(parts) >= 3 else name
    return name


class AttachStream(Protocol):
    """An open connection to a process's stdio (see ``Runtime.attach``)."""

    async def receive(self) -> tuple[int, bytes] | None:
        """The next ``(stream, data)`` of output, or ``None`` once it ended.

        ``stream`` is :data:`STDOUT` or :data:`STDERR`.
        """
        ...

    async def send(self, data: bytes) -> None:
        """Write to the process's stdin."""
        ...

    def close_stdin(self) -> None:
        """Close the process's stdin."""
        ...

    def close(self) -> None:
        """Drop the connection."""
        ...


class Runtime(Protocol):
    """What a ``runtime.*`` plugin provides; every method raises domain errors.

    Methods taking ``exec_id`` address the init process when it is ``""``.
    """

    name: str

    async def create(
        self,
        namespace: str,
        container_id: str,
        spec: dict[str, Any],
        rootfs: Sequence[Mount],
        *,
        stdin: bool = False,
    ) -> TaskState:
        """Create the task (runtime ``create``); the process waits to be started."""
        ...

    def has(self, namespace: str, container_id: str) -> bool:
        """Whether this runtime holds that task."""
        ...

    async def list_tasks(self, namespace: str) -> list[TaskState]:
        """Every task of the namespace."""
        ...

    async def state(self, namespace: str, container_id: str) -> TaskState:
        """The task's current state."""
        ...

    async def start(self, namespace: str, container_id: str, exec_id: str = "") -> ProcessState:
        """Start the init process or an exec."""
        ...

    async def kill(
        self, namespace: str, container_id: str, signal: int, *, all: bool = False,
        exec_id: str = "",
    ) -> None:
        """Send a signal to a process (``all``: every process of the task)."""
        ...

    async def delete(self, namespace: str, container_id: str, exec_id: str = "") -> ExitStatus:
        """Delete a stopped (or never started) task or exec; release its resources."""
        ...

    async def pause(self, namespace: str, container_id: str) -> None:
        """Freeze every process of a running task."""
        ...

    async def resume(self, namespace: str, container_id: str) -> None:
        """Thaw a paused task."""
        ...

    async def pids(self, namespace: str, container_id: str) -> list[ProcessInfo]:
        """Processes in the task's cgroup."""
        ...

    async def wait(self, namespace: str, container_id: str, exec_id: str = "") -> ExitStatus:
        """Block until the process exits; return how it ended."""
        ...

    async def exec(self, namespace: str, container_id: str, request: ExecRequest) -> ProcessState:
        """Add an exec process to a running task."""
        ...

    async def resize(
        self, namespace: str, container_id: str, width: int, height: int, exec_id: str = ""
    ) -> None:
        """Resize a process's terminal."""
        ...

    async def close_stdin(self, namespace: str, container_id: str, exec_id: str = "") -> None:
        """Close a process's stdin (it reads end-of-file)."""
        ...

    async def update(self, namespace: str, container_id: str, resources: dict[str, Any]) -> None:
        """Change the task's cgroup limits."""
        ...

    async def metrics(self, namespace: str, container_id: str) -> TaskMetrics:
        """Resource usage of the task's cgroup."""
        ...

    def logs(
        self, namespace: str, container_id: str, exec_id: str = "", *, follow: bool = False
    ) -> AsyncIterator[LogEntry]:
        """A process's output so far and, with ``follow``, until it exits."""
        ...

    async def attach(
        self, namespace: str, container_id: str, exec_id: str = "", *, start: bool = False
    ) -> AttachStream:
        """Connect to a process's stdio; with ``start``, start it once connected."""
        ...
