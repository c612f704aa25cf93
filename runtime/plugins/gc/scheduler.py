"""When to collect: containerd's scheduler, plus a timer for objects that expire.

Inputs are the event bus (deletions and mutations, see :data:`DELETIONS` and
:data:`MUTATIONS`), explicit requests (:meth:`Scheduler.collect`,
:meth:`Scheduler.schedule_and_wait`) and the ``containerd.io/gc.expire``
labels of leases and images. The rules are containerd's
(``docs/containerd-model.md`` section 10):

* A collection is scheduled ``schedule_delay`` after a trigger, after
  ``deletion_threshold`` deletions (when > 0), or, when nothing is scheduled
  yet, after any deletion (threshold 0) or ``mutation_threshold`` mutations.
* After each collection a periodic tick is set ``interval`` ahead, with
  ``interval = avg/pause_threshold - avg`` over the average pause (at least
  5 ms), so writers spend at most ``pause_threshold`` of their time held
  back. The tick collects only if something happened since.
* Events published before the last collection started are ignored.

Beyond containerd (which reclaims an expired lease only after some later
write, containerd#6294): a timer fires at the earliest future expiry, so an
expired lease or image is collected on time on an idle daemon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from runtime.core.errors import MoorageError, Unavailable
from runtime.core.events import Envelope, Exchange, SubscriberOverflow, Subscription
from runtime.plugins.gc.api import GCReport
from runtime.plugins.gc.collector import Collector

__all__ = ["DELETIONS", "MUTATIONS", "Scheduler"]

log = logging.getLogger("moorage.gc")

#: Topics that count as deletions (and as mutations, as in containerd).
DELETIONS = frozenset(
    {
        "/content/delete",
        "/images/delete",
        "/snapshot/remove",
        "/leases/delete",
        "/containers/delete",
    }
)
#: Topics that count as mutations.
MUTATIONS = frozenset(
    {
        "/content/create",
        "/images/create",
        "/images/update",
        "/snapshot/prepare",
        "/snapshot/commit",
        "/leases/create",
        "/containers/create",
        "/containers/update",
    }
)
# Writes that may add or move a gc.expire label: the expiry timer is re-read after them.
_EXPIRY_TOPICS = frozenset({"/leases/create", "/images/create", "/images/update"})
_FILTER = 'topic~="^/(content|images|snapshot|leases|containers)/"'
# containerd's floor for the average pause, so a fast collector is not rescheduled at once.
MINIMUM_PAUSE = 0.005
# Run a little after the expiry instant: the wall clock and the timer's clock differ.
_EXPIRY_SLACK = 0.01


class _Waiter:
    """One caller waiting for the next collection's result."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.report: GCReport | None = None
        self.error: MoorageError | None = None

    def resolve(self, report: GCReport) -> None:
        self.report = report
        self.done.set()

    def fail(self, error: MoorageError) -> None:
        self.error = error
        self.done.set()

    async def wait(self) -> GCReport:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


class Scheduler:
    """Decides when to run the :class:`Collector`; the service of ``gc.scheduler``.

    Args:
        collector: What runs a collection.
        pause_threshold: Share of time writers may be held back (0 < x <= 0.5).
        deletion_threshold: Deletions that schedule a collection (0: any, when idle).
        mutation_threshold: Mutations that schedule one when nothing is scheduled.
        schedule_delay: Seconds from a trigger to the collection.
        startup_delay: Seconds from start to the first collection (0: none).
        publish: Called with each report (the plugin publishes ``/gc/run``).

    Start it with :meth:`run` in a task group; :meth:`collect` and
    :meth:`schedule_and_wait` need it running.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        pause_threshold: float = 0.02,
        deletion_threshold: int = 0,
        mutation_threshold: int = 100,
        schedule_delay: float = 0.0,
        startup_delay: float = 0.1,
        publish: Callable[[GCReport], object] | None = None,
    ) -> None:
        if not 0 < pause_threshold <= 0.5:
            raise ValueError(f"pause_threshold must be in (0, 0.5], not {pause_threshold}")
        self.collector = collector
        self.pause_threshold = pause_threshold
        self.deletion_threshold = deletion_threshold
        self.mutation_threshold = mutation_threshold
        self.schedule_delay = schedule_delay
        self.startup_delay = startup_delay
        self._publish = publish
        self.last_report: GCReport | None = None
        self.runs = 0
        self._running = False
        self._wake = anyio.Event()
        self._next_run: float | None = None  # anyio.current_time() of the next tick
        self._expiry_at: float | None = None  # ... of the earliest future expiry
        self._expiry_dirty = True
        self._expiry_floor: datetime | None = None  # expiries up to here were handled
        self._forced = False  # collect(): run now, whatever the counters say
        self._triggered = False  # schedule_and_wait() or lost events
        self._deletions = 0
        self._mutations = 0
        self._last_start: datetime | None = None
        self._pause_total = 0.0
        self._interval = 1.0
        self._waiters: list[_Waiter] = []  # for the next collection
        self._inflight: list[_Waiter] = []  # for the one running

    # -- requests ------------------------------------------------------------------

    async def collect(self) -> GCReport:
        """Collect now (after the collection in progress, if any) and return its figures.

        Raises:
            Unavailable: The scheduler is not running.
            MoorageError: The collection failed.
        """
        waiter = self._enqueue()
        self._forced = True
        self._schedule(0.0)
        return await waiter.wait()

    async def schedule_and_wait(self) -> GCReport:
        """Trigger a collection ``schedule_delay`` from now and wait for it (sync deletes)."""
        waiter = self._enqueue()
        self._triggered = True
        self._schedule(self.schedule_delay)
        return await waiter.wait()

    def _enqueue(self) -> _Waiter:
        if not self._running:
            raise Unavailable("the garbage collector is not running")
        waiter = _Waiter()
        self._waiters.append(waiter)
        return waiter

    def _schedule(self, delay: float) -> None:
        """Make the next collection happen within ``delay`` seconds."""
        at = anyio.current_time() + delay
        if self._next_run is None or self._next_run > at:
            self._next_run = at
        self._wake.set()

    # -- inputs ----------------------------------------------------------------------

    def on_event(self, envelope: Envelope) -> None:
        """Count one event of the bus (containerd's rules, see the module docstring)."""
        if self._last_start is not None and envelope.timestamp < self._last_start:
            return  # the collection that started since covered it
        if envelope.topic in _EXPIRY_TOPICS:
            self._expiry_dirty = True
            self._wake.set()
        if envelope.topic in DELETIONS:
            self._deletions += 1
        elif envelope.topic not in MUTATIONS:
            return
        self._mutations += 1
        threshold = self.deletion_threshold
        if (threshold > 0 and self._deletions >= threshold) or (
            self._next_run is None
            and (
                (threshold == 0 and self._deletions > 0)
                or (0 < self.mutation_threshold <= self._mutations)
            )
        ):
            self._schedule(self.schedule_delay)

    # -- the loop --------------------------------------------------------------------

    async def run(
        self,
        events: Exchange | None = None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Schedule collections until cancelled; ready once subscribed to ``events``."""
        async with anyio.create_task_group() as tg:
            if events is not None:
                tg.start_soon(self._consume, events, events.subscribe(_FILTER))
            if self.startup_delay > 0:
                self._schedule(self.startup_delay)
            self._running = True
            task_status.started()
            try:
                await self._loop()
            finally:
                self.close()
                tg.cancel_scope.cancel()

    def close(self) -> None:
        """Stop accepting requests and fail every waiter (shutdown)."""
        self._running = False
        stopped = Unavailable("the garbage collector stopped")
        for waiter in [*self._inflight, *self._waiters]:
            waiter.fail(stopped)
        self._inflight, self._waiters = [], []

    async def _consume(self, events: Exchange, subscription: Subscription) -> None:
        while True:
            try:
                async with subscription:
                    async for envelope in subscription:
                        self.on_event(envelope)
                return  # the exchange closed: shutdown
            except SubscriberOverflow:
                # Events were lost: whatever they said, one collection covers it.
                self._triggered = True
                self._schedule(self.schedule_delay)
                try:
                    subscription = events.subscribe(_FILTER)
                except Unavailable:
                    return

    async def _loop(self) -> None:
        while True:
            if self._expiry_dirty:
                await self._refresh_expiry()
            now = anyio.current_time()
            deadline = min(
                (t for t in (self._next_run, self._expiry_at) if t is not None), default=math.inf
            )
            if deadline > now:
                with anyio.move_on_after(deadline - now if deadline < math.inf else None):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            expiry_due = self._expiry_at is not None and self._expiry_at <= now
            if not expiry_due and not self._due():
                self._next_run = now + self._interval  # an idle tick: look again later
                continue
            await self._run_once()

    def _due(self) -> bool:
        """Whether a tick should collect: containerd's conditions."""
        return (
            self._forced
            or self._triggered
            or self.runs == 0
            or self._deletions > 0
            or 0 < self.mutation_threshold <= self._mutations
        )

    async def _run_once(self) -> None:
        self._inflight, self._waiters = self._waiters, []
        self._forced = self._triggered = False
        self._deletions = self._mutations = 0
        self._last_start = datetime.now(UTC)
        self._next_run = self._expiry_at = None
        try:
            report = await self.collector.collect()
        except Exception as exc:
            log.exception("garbage collection failed")
            error = (
                exc
                if isinstance(exc, MoorageError)
                else MoorageError(f"garbage collection failed: {type(exc).__name__}: {exc}")
            )
            for waiter in self._inflight:
                waiter.fail(error)
            self._inflight = []
            # Retry later; the expiry timer stays off until then, or a past expiry would spin.
            self._triggered = True
            self._expiry_dirty = False
            self._next_run = anyio.current_time() + self._interval + 1.0
            return
        self.runs += 1
        self.last_report = report
        self._pause_total += report.pause_seconds
        average = max(self._pause_total / self.runs, MINIMUM_PAUSE)
        self._interval = average / self.pause_threshold - average
        self._next_run = anyio.current_time() + self._interval
        if self._forced or self._triggered:  # requested while this one ran
            self._schedule(0.0 if self._forced else self.schedule_delay)
        self._expiry_floor = report.started_at
        self._expiry_dirty = True
        if self._publish is not None:
            self._publish(report)
        for waiter in self._inflight:
            waiter.resolve(report)
        self._inflight = []

    async def _refresh_expiry(self) -> None:
        self._expiry_dirty = False
        try:
            when = await self.collector.next_expiry(after=self._expiry_floor)
        except MoorageError:
            log.warning("gc: cannot read expiry labels", exc_info=True)
            return
        if when is None:
            self._expiry_at = None
            return
        delay = max(0.0, (when - datetime.now(UTC)).total_seconds())
        self._expiry_at = anyio.current_time() + delay + _EXPIRY_SLACK
