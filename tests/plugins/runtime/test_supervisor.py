"""Exits found at startup: held back until somebody listens for them, then published once.

The supervisor runs against a real event exchange and real task records in
``tmp_path``; no runtime or monitor is needed, so these run without root.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec

from runtime.core.events import Envelope, Exchange, Subscription
from runtime.plugins.runtime.runc.layout import ProcessRecord, TaskPaths, TaskRecord
from runtime.plugins.runtime.runc.process import Process
from runtime.plugins.runtime.runc.supervisor import Supervisor
from runtime.plugins.runtime.runc.task import Task

#: Filters of the daemon's own subscribers: the GC scheduler's and the metrics plugin's.
GC_FILTER = 'topic~="^/(content|images|snapshot|leases|containers)/"'
METRICS_FILTER = 'topic=="/gc/run"'


def dead_task(tmp_path: Path, container_id: str, exit_status: int, *execs: str,
              namespace: str = "default") -> Task:
    """A task whose processes exited while the daemon was down, exits not yet published."""
    paths = TaskPaths(tmp_path / "state", tmp_path / "root", namespace, container_id)
    record = TaskRecord(namespace=namespace, container_id=container_id, runtime="runtime.runc",
                        state="created", init=ProcessRecord(pid=100, started=True))
    task = Task(record, paths)
    for exec_id in execs:
        task.execs[exec_id] = Process(container_id, ProcessRecord(id=exec_id, pid=200,
                                                                  started=True),
                                      paths.exec(exec_id))
    exited_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for process in task.processes():
        process.paths.record.mkdir(parents=True, exist_ok=True)
        process.record_exit(exit_status, exited_at)
    return task


@contextlib.asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(supervisor.run)
        yield
        tg.cancel_scope.cancel()


async def take(subscription: Subscription, count: int) -> list[Envelope]:
    with anyio.fail_after(5):
        return [await anext(subscription) for _ in range(count)]


async def eventually(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():
            await anyio.sleep(0.02)


def held(exchange: Exchange, grace: float = 30.0) -> Supervisor:
    return Supervisor(exchange.publish, exchange.wait_for_subscriber, grace=grace)


async def test_subscribers_of_other_topics_do_not_release_held_exits(tmp_path: Path) -> None:
    """The GC's and metrics' subscriptions, before or after the runtime starts, keep them held."""
    exchange = Exchange()
    supervisor = held(exchange)
    task = dead_task(tmp_path, "c1", 7)
    supervisor.defer(task, task.init)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(exchange.subscribe(METRICS_FILTER))
        async with running(supervisor):
            await stack.enter_async_context(exchange.subscribe(GC_FILTER))
            # A client of another namespace listens for exits, but not for these.
            await stack.enter_async_context(exchange.subscribe('topic~="^/tasks/"',
                                                               namespace="other"))
            await anyio.sleep(0.2)
            assert exchange.statistics().published == 0
            assert task.init.exit is not None and not task.init.exit.published

            client = await stack.enter_async_context(exchange.subscribe('topic~="^/tasks/"'))
            [envelope] = await take(client, 1)
            await eventually(lambda: task.init.exit is not None and task.init.exit.published)
    assert (envelope.namespace, envelope.topic) == ("default", "/tasks/exit")
    assert (envelope.event.container_id, envelope.event.id, envelope.event.exit_status,
            envelope.event.pid) == ("c1", "c1", 7, 100)
    assert exchange.statistics().published == 1


async def test_a_held_exit_goes_out_to_whoever_listens_for_it_only(tmp_path: Path) -> None:
    """Each task's exits wait for a listener of their own: namespace and container count."""
    exchange = Exchange()
    supervisor = held(exchange)
    mine, theirs = dead_task(tmp_path, "mine", 1), dead_task(tmp_path, "theirs", 2)
    for task in (mine, theirs):
        supervisor.defer(task, task.init)
    async with running(supervisor), exchange.subscribe("event.container_id==mine") as client:
        [envelope] = await take(client, 1)
        await anyio.sleep(0.2)
        assert envelope.event.container_id == "mine"
        assert theirs.init.exit is not None and not theirs.init.exit.published
        assert exchange.statistics().published == 1


async def test_a_task_s_held_exits_go_out_together_in_recovery_order(tmp_path: Path) -> None:
    """A listener for one of them releases all of the task's exits, init first."""
    exchange = Exchange()
    published: list[str] = []

    def publish(namespace: str, topic: str, event: msgspec.Struct) -> Envelope:
        published.append(event.id)  # type: ignore[attr-defined]
        return exchange.publish(namespace, topic, event)

    supervisor = Supervisor(publish, exchange.wait_for_subscriber, grace=30)
    task = dead_task(tmp_path, "c1", 137, "e1", "e2")
    for process in task.processes():
        supervisor.defer(task, process)
    async with running(supervisor), exchange.subscribe("event.id==e2") as only_e2:
        [e2] = await take(only_e2, 1)
        await eventually(lambda: len(published) == 3)
    assert e2.event.id == "e2"
    assert published == ["c1", "e1", "e2"]


async def test_held_exits_are_published_after_the_grace_period_without_a_listener(
    tmp_path: Path,
) -> None:
    exchange = Exchange()
    supervisor = held(exchange, grace=0.1)
    task = dead_task(tmp_path, "c1", 3)
    supervisor.defer(task, task.init)
    async with running(supervisor), exchange.subscribe(GC_FILTER):
        await eventually(lambda: task.init.exit is not None and task.init.exit.published)
    assert exchange.statistics().published == 1


async def test_a_listener_already_subscribed_at_start_gets_held_exits_at_once(
    tmp_path: Path,
) -> None:
    """Nothing to wait for: a plugin listening to /tasks/ hears them when the runtime starts."""
    exchange = Exchange()
    supervisor = held(exchange)
    task = dead_task(tmp_path, "c1", 0)
    supervisor.defer(task, task.init)
    async with exchange.subscribe('topic~="^/tasks/"') as plugin, running(supervisor):
        [envelope] = await take(plugin, 1)
    assert envelope.event.exit_status == 0


async def test_flush_publishes_a_held_exit_at_once_and_only_once(tmp_path: Path) -> None:
    """Deleting a task publishes its held exit first; a listener coming later sees no repeat."""
    exchange = Exchange()
    supervisor = held(exchange)
    task = dead_task(tmp_path, "c1", 9)
    supervisor.defer(task, task.init)
    async with running(supervisor):
        await supervisor.flush(task)
        assert exchange.statistics().published == 1
        async with exchange.subscribe():
            await anyio.sleep(0.2)
        assert exchange.statistics().published == 1
    assert task.init.exit is not None and task.init.exit.published


async def test_without_an_exchange_held_exits_are_published_at_start(tmp_path: Path) -> None:
    published: list[tuple[str, str]] = []
    supervisor = Supervisor(lambda ns, topic, _: published.append((ns, topic)), None, grace=30)
    task = dead_task(tmp_path, "c1", 1)
    supervisor.defer(task, task.init)
    async with running(supervisor):
        await eventually(lambda: bool(published))
    assert published == [("default", "/tasks/exit")]
