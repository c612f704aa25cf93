"""Watch monitors, record exits durably before publishing them, and report OOM kills.

One background task per live process waits on its monitor's pidfd. When the
monitor ends, the exit status conmon wrote is copied into ``exit.json``
(synced), then ``/tasks/exit`` is published, then the record is marked
published. A crash between any two steps leaves enough on disk for the next
start to finish the job (see :mod:`.recovery`).

Exits found while the daemon was down would be published before any client
could reconnect, so each task's are held back until a subscriber whose filters
take one of them is registered, or ``grace`` seconds pass, whichever comes
first; deleting such a task publishes its exit first. Subscribers of other
topics (the GC's, the metrics') do not release them, whenever they start.
containerd publishes such exits at once and leaves late clients to list tasks;
the hold only spares a reconnecting client that reconciliation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
import anyio.to_thread
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from runtime.api.tasks import UNKNOWN_EXIT_STATUS, TaskExit, TaskOOM
from runtime.core.errors import Unavailable
from runtime.plugins.runtime.runc.cgroups import OomNotifier, oom_notifier, total_oom_kills
from runtime.plugins.runtime.runc.process import Process
from runtime.plugins.runtime.runc.task import Task

__all__ = ["Publish", "Supervisor", "WaitForSubscriber"]

log = logging.getLogger("moorage.runtime.runc")

Publish = Callable[[str, str, msgspec.Struct], object]
#: ``wait(namespace, topic, event)``: returns once publishing ``event`` would reach a
#: subscriber; raises :class:`Unavailable` if none ever can (the exchange closed).
WaitForSubscriber = Callable[[str, str, msgspec.Struct], Awaitable[None]]


def _oom_notifier(task: Task) -> OomNotifier | None:
    return oom_notifier(task.cgroups)


class Supervisor:
    """Background watching of processes for one runtime.

    Args:
        publish: ``publish(namespace, topic, event)``.
        wait_for_subscriber: Waits until somebody would hear an event
            (:meth:`~runtime.core.events.Exchange.wait_for_subscriber`); ``None``
            without an event exchange, where holding exits back is pointless.
        interval: Seconds between OOM checks of a running task.
        grace: Seconds to hold back exits found at startup when nobody listens.
    """

    def __init__(self, publish: Publish, wait_for_subscriber: WaitForSubscriber | None, *,
                 interval: float = 1.0, grace: float = 10.0) -> None:
        self.publish = publish
        self.wait_for_subscriber = wait_for_subscriber
        self.interval = interval
        self.grace = grace
        self._tg: TaskGroup | None = None
        self._pending: list[tuple[Task, Process]] = []
        self._queued: list[tuple[Task, Process]] = []
        #: Kills a process whose monitor died without recording its exit (set by the runtime).
        self.on_lost: Callable[[Task, Process], Awaitable[None]] | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the watchers until cancelled (started in the daemon's task group)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for task, process in self._queued:
                tg.start_soon(self._watch, task, process)
            self._queued.clear()
            task_status.started()
            # One grace period for all, counted from here: the API serves from about now.
            deadline = anyio.current_time() + self.grace
            for task in dict.fromkeys(t for t, _ in self._pending):
                tg.start_soon(self._publish_pending_when_heard, task, deadline)
            await anyio.sleep_forever()

    def watch(self, task: Task, process: Process) -> None:
        """Watch ``process`` until it exits (queued until :meth:`run` starts)."""
        if self._tg is None:
            self._queued.append((task, process))
        else:
            self._tg.start_soon(self._watch, task, process)

    def defer(self, task: Task, process: Process) -> None:
        """Publish the already recorded exit of ``process`` after the grace period."""
        self._pending.append((task, process))

    async def flush(self, task: Task) -> None:
        """Publish the held-back exits of ``task`` now (before its delete)."""
        mine = [(t, p) for t, p in self._pending if t is task]
        self._pending = [(t, p) for t, p in self._pending if t is not task]
        for _, process in mine:
            async with task.order:
                await self._announce(task, process)

    async def _publish_pending_when_heard(self, task: Task, deadline: float) -> None:
        """Publish the held-back exits of ``task`` once one would be heard, or at ``deadline``.

        All of the task's exits go out together, in recovery order, whichever
        of them found a listener.
        """
        with anyio.CancelScope(deadline=deadline):
            if not await self._heard(task):
                return  # no exchange any more: left unpublished for the next start
        await self.flush(task)

    async def _heard(self, task: Task) -> bool:
        """Wait until a subscriber would take one of ``task``'s held exits; False if none can."""
        wait = self.wait_for_subscriber
        if wait is None:
            return True
        heard = False
        async with anyio.create_task_group() as tg:

            async def wait_for(process: Process) -> None:
                nonlocal heard
                with contextlib.suppress(Unavailable):
                    await wait(task.namespace, "/tasks/exit", self._exit_event(task, process))
                    heard = True
                    tg.cancel_scope.cancel()

            for held_task, process in self._pending:
                if held_task is task:
                    tg.start_soon(wait_for, process)
        return heard

    async def _watch(self, task: Task, process: Process) -> None:
        async def tick() -> None:
            if process is task.init:
                async with task.order:
                    await self.check_oom(task)

        # OOM kills of the init process's cgroup: from the kernel's notification
        # where the host gives one, else by polling the counter every interval.
        notifier = None
        if process is task.init:
            notifier = await anyio.to_thread.run_sync(_oom_notifier, task)
        try:
            await process.watch(tick, self.interval, notifier)
        finally:
            if notifier is not None:
                notifier.close()
        exit_status, exited_at = await self.final_status(task, process)
        async with task.order:
            if process is task.init:
                # An OOM kill is reported before the exit it caused.
                await self.check_oom(task)
            await anyio.to_thread.run_sync(process.record_exit, exit_status, exited_at)
            await self._announce(task, process)

    async def final_status(self, task: Task, process: Process) -> tuple[int, datetime]:
        """The exit conmon recorded; if it died without recording one, 255 (now).

        A monitor that died first leaves its process running unsupervised, with
        nobody holding its stdio: it is killed so that the reported exit is true.
        """
        found = process.monitor_exit()
        if found is not None:
            return found
        log.warning("monitor of task %s process %s ended without an exit status; killing "
                    "the process", task.id, process.event_id, extra={"namespace": task.namespace})
        if self.on_lost is not None:
            await self.on_lost(task, process)
        return UNKNOWN_EXIT_STATUS, datetime.now(UTC)

    async def _announce(self, task: Task, process: Process) -> None:
        """Publish ``/tasks/exit`` for a recorded exit, then mark it published."""
        if process.exit is None or process.exit.published:
            return
        self.publish(task.namespace, "/tasks/exit", self._exit_event(task, process))
        log.info("task %s process %s exited with status %d", task.id, process.event_id,
                 process.exit.exit_status, extra={"namespace": task.namespace})
        await anyio.to_thread.run_sync(process.mark_published)

    @staticmethod
    def _exit_event(task: Task, process: Process) -> TaskExit:
        """The ``/tasks/exit`` payload of a recorded exit."""
        assert process.exit is not None
        return TaskExit(
            container_id=task.id, id=process.event_id, pid=process.record.pid,
            exit_status=process.exit.exit_status, exited_at=process.exit.exited_at)

    async def check_oom(self, task: Task) -> None:
        """Publish ``/tasks/oom`` if the task's cgroup saw a new OOM kill (hold ``order``)."""
        kills = await anyio.to_thread.run_sync(total_oom_kills, task.cgroups)
        # conmon's marker covers kernels whose cgroup files lack an oom_kill counter.
        if kills == 0 and task.init.paths.oom.exists():
            kills = 1
        if kills <= task.record.oom_published:
            return
        task.record.oom_published = kills
        self.publish(task.namespace, "/tasks/oom", TaskOOM(container_id=task.id))
        log.info("task %s: OOM kill in its cgroup", task.id, extra={"namespace": task.namespace})
        with contextlib.suppress(FileNotFoundError):
            await anyio.to_thread.run_sync(task.save)
