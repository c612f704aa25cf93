"""Task wire types: states, events and request bodies of the task service and its runtimes.

A *task* is a container's running form: its init process plus any *exec*
processes; see :mod:`runtime.plugins.runtime.api` for the status transitions and
the order of events. These Structs are what the task routes answer, what the
event stream carries and what both clients decode.
"""


from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from runtime.api.mounts import Mount

__all__ = [
    "KEEP_CGROUP_PARENTS_ANNOTATION",
    "LOG_PATH_ANNOTATION",
    "LOG_UNSYNCED_ANNOTATION",
    "STDERR",
    "STDOUT",
    "UNKNOWN_EXIT_STATUS",
    "CreateTaskRequest",
    "ExecOutput",
    "ExecRequest",
    "ExitStatus",
    "KillRequest",
    "LogEntry",
    "ProcessInfo",
    "ProcessRequest",
    "ProcessState",
    "ResizeRequest",
    "Status",
    "StopRequest",
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
]


#: Spec annotation: the init process's log file (the CRI's ``log_directory/log_path``),
#: written by the monitor in the CRI's ``k8s-file`` format instead of the task's own log.
LOG_PATH_ANNOTATION = "io.moorage.log-path"
#: Spec annotation ``"true"``: the monitor does not sync the init process's log when the
#: process ends (conmon's ``--no-sync-log``). Set on an attached ``run --rm`` container,
#: whose output went to its client and whose log is removed with it right after the exit,
#: so the sync would only delay the exit's report.
LOG_UNSYNCED_ANNOTATION = "io.moorage.log-unsynced"
#: Spec annotation ``"true"``: the cgroups above the task's own belong to someone else (the
#: kubelet's pod cgroup under ``/kubepods``), so deleting the task never removes them, empty
#: or not. Without it the runtime removes the empty ones it made (``<cgroup_parent>/<ns>``).
KEEP_CGROUP_PARENTS_ANNOTATION = "io.moorage.cgroup.keep-parents"
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
        io_reads, io_writes: Read and write operations on block devices.
        cpu_user_usec, cpu_system_usec: CPU time in user and kernel mode (v1 counts
            it in clock ticks: 10 ms steps).
        cpu_periods, cpu_throttled_periods, cpu_throttled_usec: CFS quota periods
            elapsed, those in which the cgroup was throttled, and the time throttled.
        memory_max_usage_bytes: The highest ``memory_usage_bytes`` seen (v2: 0 on
            kernels without ``memory.peak``).
        memory_cache_bytes, memory_rss_bytes, memory_mapped_file_bytes: Page cache,
            anonymous memory and mapped files (``memory.stat``).
        memory_swap_bytes: Swap in use.
        memory_kernel_bytes: Kernel memory charged (v1 ``kmem``, v2 ``kernel``).
        memory_inactive_file_bytes: Page cache the kernel may reclaim first; usage less
            this is the working set the kubelet evicts by.
        memory_failcnt: Times the limit was hit (v1 ``failcnt``, v2 ``events max``).
        memory_pgfault, memory_pgmajfault: Page faults, and those that read from disk.
        pids: The processes in the cgroup now (``cgroup.procs``; threads not listed).
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
    io_reads: int = 0
    io_writes: int = 0
    cpu_user_usec: int = 0
    cpu_system_usec: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_usec: int = 0
    memory_max_usage_bytes: int = 0
    memory_cache_bytes: int = 0
    memory_rss_bytes: int = 0
    memory_mapped_file_bytes: int = 0
    memory_swap_bytes: int = 0
    memory_kernel_bytes: int = 0
    memory_inactive_file_bytes: int = 0
    memory_failcnt: int = 0
    memory_pgfault: int = 0
    memory_pgmajfault: int = 0
    pids: list[int] = msgspec.field(default_factory=list)


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


class TaskExit(ExitStatus):
    """Event ``/tasks/exit``; ``id`` is the exec id, or the container id for the init process."""


class TaskDelete(ExitStatus):
    """Event ``/tasks/delete``: how the deleted task's process ended."""


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


class StopRequest(_Body):
    """``POST /v1/tasks/{id}/stop``: the stop signal, then SIGKILL after ``timeout`` seconds.

    An empty ``signal`` means the container's: its image's ``StopSignal``, else
    SIGTERM (Docker's rule).
    """

    signal: int | str = ""
    timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0


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


class ExecOutput(msgspec.Struct, kw_only=True):
    """How an exec run to its end in one call ended (``Runtime.exec_sync``).

    ``timed_out``: the deadline passed and the process tree was killed; then
    ``exit_status`` is whatever the kill left and the output is partial.
    """

    pid: int
    exit_status: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False


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


