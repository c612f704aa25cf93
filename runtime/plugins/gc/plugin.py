"""Registration of ``gc.scheduler``: config in, a running :class:`Scheduler` out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec

from runtime.core.errors import InvalidArgument
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.plugins.api.api import route_set
from runtime.plugins.content.api import NamespacedContent
from runtime.plugins.gc.api import EVENT_NAMESPACE, EVENT_TOPIC, Collections, GCReport
from runtime.plugins.gc.collector import Collector
from runtime.plugins.gc.scheduler import Scheduler
from runtime.plugins.metadata.api import Metadata
from runtime.plugins.snapshots.api import Snapshots

__all__ = ["GCConfig", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: float | str) -> float:
    """Seconds from a number of seconds or a Go duration (``"100ms"``, ``"1m30s"``, ``"0"``).

    Raises:
        InvalidArgument: Neither, or negative.
    """
    if isinstance(value, int | float):
        seconds = float(value)
    elif value.strip() == "0":
        seconds = 0.0
    else:
        text = value.strip()
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise InvalidArgument(f'invalid duration {value!r}: use e.g. "100ms", "2s", "1m"')
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0 or seconds != seconds:
        raise InvalidArgument(f"invalid duration {value!r}: must not be negative")
    return seconds


class GCConfig(PluginConfig):
    """``[plugins."gc.scheduler"]``: containerd's knobs, names and defaults.

    Attributes:
        pause_threshold: Largest share of time writers may be held back by
            collections; sets the interval between periodic ticks.
        deletion_threshold: Deletions that schedule a collection at once;
            0 means any deletion does, when none is scheduled.
        mutation_threshold: Mutations that schedule a collection when none
            is scheduled; 0 means mutations never do.
        schedule_delay: From a trigger to its collection (``"0s"``).
        startup_delay: From start to the first collection (``"100ms"``; 0: none).
    """

    pause_threshold: Annotated[float, msgspec.Meta(gt=0, le=0.5)] = 0.02
    deletion_threshold: Annotated[int, msgspec.Meta(ge=0)] = 0
    mutation_threshold: Annotated[int, msgspec.Meta(ge=0)] = 100
    schedule_delay: float | str = "0s"
    startup_delay: float | str = "100ms"


async def init(ctx: InitContext[GCConfig]) -> Collections:
    """Build the collector over metadata, content and snapshots; start the scheduler."""
    config = ctx.config
    metadata: Metadata = ctx.get("metadata.sqlite")
    content: NamespacedContent = ctx.get("content.local")
    snapshots: Snapshots = ctx.get("service.snapshots")
    collector = Collector(
        metadata.db,
        content.store,
        {name: ns.backend for name, ns in snapshots.snapshotters.items()},
        {name: ns.in_flight for name, ns in snapshots.snapshotters.items()},
    )
    events = ctx.events

    def publish(report: GCReport) -> Any:
        return events.publish(EVENT_NAMESPACE, EVENT_TOPIC, report) if events else None

    scheduler = Scheduler(
        collector,
        pause_threshold=config.pause_threshold,
        deletion_threshold=config.deletion_threshold,
        mutation_threshold=config.mutation_threshold,
        schedule_delay=parse_duration(config.schedule_delay),
        startup_delay=parse_duration(config.startup_delay),
        publish=publish,
    )
    await ctx.start(scheduler.run, events, name="gc.scheduler")
    return scheduler


async def close(scheduler: Scheduler) -> None:
    """Fail the callers still waiting; the host cancels the loop afterwards."""
    scheduler.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The garbage collection scheduler."""
    yield Registration(
        type="gc",
        id="scheduler",
        init=init,
        close=close,
        config=GCConfig,
        requires=("metadata.sqlite", "content.local", "service.snapshots"),
        description="mark-and-sweep garbage collection of content, snapshots, images, leases",
    )
    yield route_set("gc", ("gc.scheduler",), "garbage collection",
                    "runtime.plugins.gc.routes:gc_routes")
