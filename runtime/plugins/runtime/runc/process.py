"""One process of a task (the init process or an exec): its status, monitor and exit.

The monitor (conmon) is not our child, so its end is observed through a pidfd,
which works for any process; the pid is trusted only while the process's
start time matches the one recorded when it was launched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from runtime.api.tasks import UNKNOWN_EXIT_STATUS, ExitStatus, ProcessState, Status
from runtime.plugins.runtime.runc.conmon import process_start_time
from runtime.plugins.runtime.runc.layout import (
    ExitRecord,
    ProcessPaths,
    ProcessRecord,
    read_record,
    write_record,
)

__all__ = ["Process"]


class Process:
    """A process and everything the daemon knows about it.

    Args:
        container_id: The task's container id.
        record: The persisted process record.
        paths: The process's files.
    """

    def __init__(self, container_id: str, record: ProcessRecord, paths: ProcessPaths) -> None:
        self.container_id = container_id
        self.record = record
        self.paths = paths
        self.status = Status.RUNNING if record.started else Status.CREATED
        self.exit: ExitRecord | None = None
        self.exited = anyio.Event()

    @property
    def id(self) -> str:
        """The exec id, ``""`` for the init process."""
        return self.record.id

    @property
    def event_id(self) -> str:
        """The ``id`` of its events: the exec id, or the container id for the init process."""
        return self.record.id or self.container_id

    def state(self) -> ProcessState:
        """The public view of the process."""
        return ProcessState(
            container_id=self.container_id, id=self.id, pid=self.record.pid,
            status=self.status, terminal=self.record.terminal, stdin=self.record.stdin,
            exit_status=self.exit.exit_status if self.exit else None,
            exited_at=self.exit.exited_at if self.exit else None,
        )  # fmt: skip

    def exit_status(self) -> ExitStatus:
        """How it ended (only meaningful once :attr:`exited` is set)."""
        return ExitStatus(
            container_id=self.container_id, id=self.event_id, pid=self.record.pid,
            exit_status=self.exit.exit_status if self.exit else UNKNOWN_EXIT_STATUS,
            exited_at=self.exit.exited_at if self.exit else None,
        )

    async def wait(self) -> ExitStatus:
        """Block until the process has exited and its exit is recorded on disk."""
        await self.exited.wait()
        return self.exit_status()

    # -- the monitor --------------------------------------------------------------

    def monitor_alive(self) -> bool:
        """Whether the recorded monitor is still running."""
        pid = self.record.monitor_pid
        return bool(pid) and process_start_time(pid, running=True) == self.record.monitor_start

    def open_monitor(self) -> int | None:
        """A pidfd of the live monitor, or ``None`` if it is gone."""
        pid = self.record.monitor_pid
        if not pid:
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return None
            raise
        # Checked after opening: the pidfd now pins the process the start time names.
        if process_start_time(pid) != self.record.monitor_start:
            os.close(fd)
            return None
        return fd

    def signal_directly(self, signum: int) -> bool:
        """Signal this process (a task's init) without the OCI runtime; False if unsure.

        ``runc kill`` without ``--all`` only signals the init process after
        checking it is the container's; a runtime process costs far more than that
        (each teardown of a burst of containers starts one per container). The
        same check, here: the pid, pinned with a pidfd, must still be a child of
        the task's live monitor (conmon is its subreaper). Otherwise the runtime
        decides, and reports what is wrong.
        """
        pid = self.record.pid
        if not pid or not self.monitor_alive():
            return False
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            if _parent_pid(pid) != self.record.monitor_pid:
                return False
            signal.pidfd_send_signal(pidfd, signum)
        except OSError:
            return False
        finally:
            os.close(pidfd)
        return True

    async def watch(self, tick: Callable[[], Awaitable[None]], interval: float,
                    notifier: Any = None) -> None:
        """Return once the monitor has exited, calling ``tick()`` meanwhile.

        ``tick()`` runs each time ``notifier`` (an object with ``fileno()`` and
        ``drain()``) turns readable or, without one, every ``interval`` seconds.
        """
        fd = self.open_monitor()
        if fd is None:
            return
        try:
            if notifier is None:
                while True:
                    with anyio.move_on_after(interval):
                        await anyio.wait_readable(fd)
                        return
                    await tick()

            async def on_notice() -> None:
                while True:
                    await anyio.wait_readable(notifier.fileno())
                    notifier.drain()
                    await tick()

            async with anyio.create_task_group() as tg:
                tg.start_soon(on_notice)
                await anyio.wait_readable(fd)
                tg.cancel_scope.cancel()
        finally:
            os.close(fd)

    def monitor_exit(self) -> tuple[int, datetime] | None:
        """The status conmon recorded and when, or ``None`` if it recorded none."""
        try:
            text = self.paths.monitor_exit.read_text().strip()
            when = datetime.fromtimestamp(self.paths.monitor_exit.stat().st_mtime, UTC)
            return int(text), when
        except (OSError, ValueError):
            return None

    # -- the exit record ------------------------------------------------------------

    def load_exit(self) -> bool:
        """Read a previously recorded exit; True if there is one."""
        found = read_record(self.paths.exit_record, ExitRecord)
        if found is not None:
            self.exit = found
            self.status = Status.STOPPED
            self.exited.set()
        return found is not None

    def record_exit(self, exit_status: int, exited_at: datetime) -> None:
        """Write the exit (blocking) before the caller publishes it.

        Written for a crash of the daemon, which the page cache outlives, not
        for a power loss: that ends the task's whole world (its cgroup, its
        bundle, conmon), and recovery gives a process without a readable exit
        the status conmon left, or 255. An fsync here cost each container about
        10 ms on the path every `run --rm` waits on.
        """
        self.exit = ExitRecord(exit_status=exit_status, exited_at=exited_at)
        write_record(self.paths.exit_record, self.exit, sync=False)
        self.status = Status.STOPPED
        self.exited.set()

    def mark_published(self) -> None:
        """Note that ``/tasks/exit`` went out, so a restart does not repeat it (blocking)."""
        if self.exit is not None and not self.exit.published:
            self.exit.published = True
            # The task may have been deleted meanwhile; then nothing is left to mark.
            # Not synced: after a power loss the exit is at worst published again.
            with contextlib.suppress(FileNotFoundError):
                write_record(self.paths.exit_record, self.exit, sync=False)


def _parent_pid(pid: int) -> int:
    """The parent of ``pid`` from ``/proc`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    # The command name may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rfind(b")") + 2 :].split()[1])
