"""The runtime contract: the Runtime protocol every ``runtime.*`` plugin implements.

Its states, events and request bodies are wire types, in :mod:`runtime.api.tasks`
(and the spec inputs in :mod:`runtime.api.specs`).

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
from typing import Any, Protocol

from runtime.api.mounts import Mount
from runtime.api.tasks import (
    ExecOutput,
    ExecRequest,
    ExitStatus,
    LogEntry,
    ProcessInfo,
    ProcessState,
    TaskMetrics,
    TaskState,
)

__all__ = ["AttachStream", "ExecStream", "Runtime", "runtime_plugin_id"]


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


class ExecStream(AttachStream, Protocol):
    """The stdio of an exec the caller owns (see ``Runtime.exec_stream``) and its end."""

    pid: int

    async def end(self, *, kill: bool = False) -> int:
        """Wait for the exit, killing its process tree first with ``kill``; the status."""
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

    async def mount_options(self) -> frozenset[str]:
        """The spec mount options the OCI runtime understands (``rro``, ``rnosuid``...).

        From the runtime's ``features`` document (OCI runtime-spec
        ``features.md``); empty when the runtime cannot tell. Asked once, then
        remembered: the binary does not change under a running daemon.
        """
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

    async def exec_sync(
        self, namespace: str, container_id: str, request: ExecRequest, *,
        timeout: float | None = None, output_limit: int = 16 << 20,
    ) -> ExecOutput:
        """Run an exec (no terminal, no stdin) to its end and return its output.

        At most ``output_limit`` bytes of stdout and stderr together are kept;
        the rest is read and dropped.

        Unlike :meth:`exec`, nothing is recorded: the process is the daemon's for
        the call's length (a restart forgets it); it still sends exec-added,
        exec-started, exit and delete. On ``timeout`` its process tree is killed.
        """
        ...

    async def exec_stream(
        self, namespace: str, container_id: str, request: ExecRequest
    ) -> ExecStream:
        """Start an exec without a terminal, its stdio wired to the returned stream.

        As with :meth:`exec_sync` nothing is recorded and the events are sent;
        the caller must ``end()`` it.
        """
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
