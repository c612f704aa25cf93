"""``PrometheusMetrics``: the service of ``metrics.prometheus``.

Two kinds of figures meet in each scrape:

* counted as things happen: API requests (:meth:`PrometheusMetrics.middleware`)
  and garbage collections (:meth:`PrometheusMetrics.follow_gc`, from ``/gc/run``),
  in the plain series of :mod:`.series`;
* read at scrape time from the running plugins (:mod:`.figures`).

``prometheus_client`` (and :mod:`.figures`, built on it) is imported by the
first scrape, not at start: an idle daemon that nobody scrapes keeps about
1 MB less. Each scrape builds its own collector, never touching the
``prometheus_client`` global registry, so two daemons in one process, as in
tests, do not collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from runtime.core.errors import InvalidArgument, Unavailable
from runtime.core.events import Exchange, SubscriberOverflow
from runtime.core.host import PluginSet
from runtime.pkg.http import web
from runtime.plugins.gc.api import EVENT_TOPIC, GCReport
from runtime.plugins.metrics.series import (
    CounterSeries,
    HistogramSeries,
    created_series_enabled,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["PrometheusMetrics"]

log = logging.getLogger("moorage.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Most API calls finish in milliseconds; pulls and waits take long, streams longer.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
_GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _Scraped:
    """A collector handing out the families of one scrape (what ``generate_latest`` reads)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class PrometheusMetrics:
    """The daemon's metrics in Prometheus text format.

    Args:
        plugins: The daemon's plugin set, read at each scrape.
        events: The event exchange (for ``/gc/run``), or ``None``.
    """

    def __init__(self, plugins: PluginSet, events: Exchange | None) -> None:
        self.plugins = plugins
        self.events = events
        self.requests = CounterSeries(
            "moorage_api_requests", "API requests answered, by route and status.",
            ["method", "route", "status"])
        self.latency = HistogramSeries(
            "moorage_api_request_duration_seconds",
            "Time from a request's arrival to its handler's return (a stream's whole life).",
            _LATENCY_BUCKETS, ["method", "route"])
        self.gc_runs = CounterSeries("moorage_gc_collections", "Garbage collections run.")
        self.gc_pause = HistogramSeries("moorage_gc_pause_seconds",
                                        "Time writers were held back by a collection.",
                                        _GC_BUCKETS)
        self.gc_duration = HistogramSeries("moorage_gc_duration_seconds",
                                           "Whole collections, mark to disk cleanup.",
                                           _GC_BUCKETS)
        self.gc_removed = CounterSeries("moorage_gc_removed_objects",
                                        "Objects removed by collections, by kind.", ["kind"])
        self.gc_removed_bytes = CounterSeries("moorage_gc_removed_bytes",
                                              "Bytes freed on disk by collections, by kind.",
                                              ["kind"])
        #: In the order of the exposition (before the figures read at scrape time).
        self._series: tuple[CounterSeries | HistogramSeries, ...] = (
            self.requests, self.latency, self.gc_runs, self.gc_pause, self.gc_duration,
            self.gc_removed, self.gc_removed_bytes)
        # prometheus_client reads this when imported, which used to be at start.
        self._created = created_series_enabled()
        # One scrape at a time, as when a shared collector handed out the families.
        self._lock = anyio.Lock()
        self._server: web.HttpServer | None = None

    async def listen(self, address: str) -> None:
        """Serve ``GET /metrics`` on ``host:port`` too (no token: keep it on loopback).

        Raises:
            InvalidArgument: ``address`` is not ``host:port``.
        """
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgument(f"address {address!r}: expected host:port")
        host = host.strip("[]") or "127.0.0.1"
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        app.router.add_get("/v1/metrics", self.handle)
        self._server = web.HttpServer(app)
        await self._server.serve_tcp(host, int(port))
        log.info("metrics listening on http://%s:%s/metrics", host, port)

    async def aclose(self) -> None:
        """Stop the separate listener, if any."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def render(self) -> bytes:
        """The whole exposition, with the plugins' figures read now."""
        from prometheus_client.exposition import generate_latest

        from runtime.plugins.metrics.figures import read_all

        async with self._lock:
            figures = await read_all(self.plugins)
            families = [series.family(self._created) for series in self._series]
            return generate_latest(_Scraped(families + figures))

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /v1/metrics`` (and ``/metrics`` on the separate listener)."""
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        body = await self.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- API requests -----------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request by its route pattern (not its path: bounded labels)."""
        started = time.perf_counter()
        status = "500"
        try:
            response = await handler(request)
            status = str(response.status)
            return response
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        except BaseException as exc:
            # A client that went away cancels its handler: nginx's 499.
            status = "499" if isinstance(exc, anyio.get_cancelled_exc_class()) else "500"
            raise
        finally:
            info = request.match_info
            resource = info.route.resource if info is not None else None
            route = resource.canonical if resource is not None else "unmatched"
            self.requests.inc((request.method, route, status))
            self.latency.observe(time.perf_counter() - started, (request.method, route))

    # -- garbage collection -------------------------------------------------------------

    def record_gc(self, report: GCReport) -> None:
        """Count one collection."""
        self.gc_runs.inc()
        self.gc_pause.observe(report.pause_seconds)
        self.gc_duration.observe(report.total_seconds)
        for kind, removed in report.removed.items():
            self.gc_removed.inc((kind,), removed.records + removed.disk)
            self.gc_removed_bytes.inc((kind,), removed.bytes)

    async def follow_gc(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                        ) -> None:
        """Count every ``/gc/run`` event; runs until cancelled at shutdown."""
        if self.events is None:
            task_status.started()
            return
        ready = False
        while True:
            try:
                subscription = self.events.subscribe(f'topic=="{EVENT_TOPIC}"')
            except Unavailable:
                break  # the exchange is closed: the daemon is stopping
            try:
                async with subscription as events:
                    if not ready:
                        task_status.started()
                        ready = True
                    async for envelope in events:
                        self.record_gc(_report(envelope.event))
                break  # the stream ended: the exchange closed
            except SubscriberOverflow as exc:
                # Fell behind: the collections meanwhile are lost; subscribe again.
                log.warning("metrics: %s", exc.message)
        if not ready:
            task_status.started()

def _report(event: Any) -> GCReport:
    return event if isinstance(event, GCReport) else msgspec.convert(event, GCReport)
