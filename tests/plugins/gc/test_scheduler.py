"""The scheduler: containerd's triggers and thresholds, explicit runs, and the expiry timer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.core.errors import Unavailable
from runtime.plugins.gc.api import EVENT_NAMESPACE, EVENT_TOPIC, GCReport
from runtime.plugins.gc.plugin import GCConfig, parse_duration
from runtime.plugins.gc.scheduler import Scheduler
from runtime.plugins.metadata.api import Resource
from tests.plugins.gc.conftest import World

MakeWorld = Callable[[Path], AbstractAsyncContextManager[World]]
SETTLE = 0.03


@asynccontextmanager
async def running(world: World, **kw: Any) -> AsyncIterator[Scheduler]:
    """A scheduler over ``world`` publishing ``/gc/run``, started on its exchange."""
    kw.setdefault("startup_delay", 0.0)

    def publish(report: GCReport) -> None:
        world.exchange.publish(EVENT_NAMESPACE, EVENT_TOPIC, report)

    scheduler = Scheduler(world.collector, publish=publish, **kw)
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run, world.exchange)
        yield scheduler
        tg.cancel_scope.cancel()


async def wait_for_runs(scheduler: Scheduler, runs: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while scheduler.runs < runs:
            await anyio.sleep(0.01)


async def test_expired_lease_is_collected_on_time_without_further_writes(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world:
        digest = await world.blob("a", b"pulled", lease=None)
        await world.leases.create("a", "pull", expire=timedelta(seconds=0.4))
        await world.leases.add_resource("a", "pull", Resource(type="content", id=digest))
        # The blob is only held by the lease; a collection before expiry keeps it.
        async with running(world) as scheduler:
            await anyio.sleep(0.2)
            assert scheduler.runs == 0  # creates alone (2 mutations) schedule nothing
            await wait_for_runs(scheduler, 1, timeout=3.0)
            assert scheduler.last_report is not None
            assert scheduler.last_report.removed["leases"].records == 1
            assert scheduler.last_report.removed["content"].disk == 1
            assert (await world.state()).blobs == set()
            await anyio.sleep(0.3)
            assert scheduler.runs == 1  # and the timer does not spin afterwards


async def test_expired_image_is_collected_by_the_timer(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    async with make_world(tmp_path) as world:
        target = await world.blob("a", b"index")
        soon = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
        await world.image("a", "temporary", target, {"containerd.io/gc.expire": soon})
        async with running(world) as scheduler:
            await wait_for_runs(scheduler, 1, timeout=3.0)
            assert (await world.state()).images == set()


async def test_a_deletion_schedules_a_collection(make_world: MakeWorld, tmp_path: Path) -> None:
    async with make_world(tmp_path) as world:
        await world.blob("a", b"keep", {"containerd.io/gc.root": "1"})
        digest = await world.blob("a", b"doomed")
        async with running(world) as scheduler:
            await anyio.sleep(SETTLE)
            await world.content.delete("a", digest)
            await wait_for_runs(scheduler, 1)


async def test_mutations_schedule_a_collection_at_the_threshold(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world, running(world, mutation_threshold=3) as scheduler:
        await world.blob("a", b"one")
        await world.blob("a", b"two")
        await anyio.sleep(0.1)
        assert scheduler.runs == 0
        await world.blob("a", b"three")
        await wait_for_runs(scheduler, 1)


async def test_collect_runs_now_and_returns_the_figures(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world:
        await world.blob("a", b"garbage")
        await anyio.sleep(SETTLE)
        async with (
            running(world, mutation_threshold=0) as scheduler,
            world.exchange.subscribe(f'topic=="{EVENT_TOPIC}"') as events,
        ):
            report = await scheduler.collect()
            assert report.removed["content"].records == 1
            assert report.removed["content"].bytes == len(b"garbage")
            assert report.pause_seconds > 0
            envelope = await events.__anext__()
            assert envelope.namespace == EVENT_NAMESPACE
            assert envelope.event is report


async def test_concurrent_requests_share_runs(make_world: MakeWorld, tmp_path: Path) -> None:
    async with make_world(tmp_path) as world:
        reports: list[GCReport] = []
        async with running(world) as scheduler:

            async def one() -> None:
                reports.append(await scheduler.collect())

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(one)
            await scheduler.schedule_and_wait()
        assert len(reports) == 5
        assert scheduler.runs <= 3  # the five callers shared a run (or two)


async def test_periodic_tick_collects_deletions_after_the_first_run(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world:
        digest = await world.blob("a", b"doomed")
        await world.leases.create("a", "hold")
        await world.leases.add_resource("a", "hold", Resource(type="content", id=digest))
        async with running(world, startup_delay=0.01) as scheduler:
            await wait_for_runs(scheduler, 1)  # the startup run
            await anyio.sleep(SETTLE)
            await world.leases.delete("a", "hold")
            # Something is scheduled already (the tick), so the deletion waits for it.
            await wait_for_runs(scheduler, 2, timeout=3.0)
            assert (await world.state()).blobs == set()


async def test_requests_need_a_running_scheduler(make_world: MakeWorld, tmp_path: Path) -> None:
    async with make_world(tmp_path) as world:
        scheduler = Scheduler(world.collector)
        with pytest.raises(Unavailable, match="not running"):
            await scheduler.collect()


def test_config_defaults_are_containerds() -> None:
    config = GCConfig()
    assert (config.pause_threshold, config.deletion_threshold, config.mutation_threshold) == (
        0.02,
        0,
        100,
    )
    assert parse_duration(config.schedule_delay) == 0.0
    assert parse_duration(config.startup_delay) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("100ms", 0.1),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        (2, 2.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "10", "-1s", "1d", "1s 2s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
