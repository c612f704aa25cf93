"""``PrometheusMetrics``: the service of ``metrics.prometheus``.

Two kinds of figures meet in one registry of its own (never the
``prometheus_client`` global one, so two daemons in one process, as in tests,
do not collide):

* counted as things happen: API requests (:meth:`PrometheusMetrics.middleware`)
  and garbage collections (:meth:`PrometheusMetrics.follow_gc`, from ``/gc/run``);
* read at scrape time from the running plugins (:mod:`.figures`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from runtime.core.errors import InvalidArgument, Unavailable
from runtime.core.events import Exchange, SubscriberOverflow
from runtime.core.host import PluginSet
from runtime.plugins.gc.api import EVENT_TOPIC, GCReport
from runtime.plugins.metrics.figures import read_all

__all__ = ["CONTENT_TYPE", "PrometheusMetrics"]

log = logging.getLogger("moorage.metrics")

#: The exposition format's media type (text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Most API calls finish in milliseconds; pulls and waits take long, streams longer.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
_GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _Scraped:
    """A collector handing out the families read for the scrape in progress."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

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
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "moorage_api_requests", "API requests answered, by route and status.",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "moorage_api_request_duration_seconds",
            "Time from a request's arrival to its handler's return (a stream's whole life).",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.gc_runs = Counter("moorage_gc_collections", "Garbage collections run.",
                               registry=self.registry)
        self.gc_pause = Histogram("moorage_gc_pause_seconds",
                                  "Time writers were held back by a collection.",
                                  buckets=_GC_BUCKETS, registry=self.registry)
        self.gc_duration = Histogram("moorage_gc_duration_seconds",
                                     "Whole collections, mark to disk cleanup.",
                                     buckets=_GC_BUCKETS, registry=self.registry)
        self.gc_removed = Counter("moorage_gc_removed_objects",
                                  "Objects removed by collections, by kind.", ["kind"],
                                  registry=self.registry)
        self.gc_removed_bytes = Counter("moorage_gc_removed_bytes",
                                        "Bytes freed on disk by collections, by kind.",
                                        ["kind"], registry=self.registry)
        self._scraped = _Scraped()
        self.registry.register(self._scraped)
        # One scrape at a time: the collector hands out one scrape's families.
        self._lock = anyio.Lock()
        self._runner: web.AppRunner | None = None

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
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, int(port)).start()
        log.info("metrics listening on http://%s:%s/metrics", host, port)

    async def aclose(self) -> None:
        """Stop the separate listener, if any."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def render(self) -> bytes:
        """The whole exposition, with the plugins' figures read now."""
        async with self._lock:
            self._scraped.families = await read_all(self.plugins)
            try:
                return generate_latest(self.registry)
            finally:
                self._scraped.families = []

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /v1/metrics`` (and ``/metrics`` on the separate listener)."""
        return web.Response(body=await self.render(), headers={"Content-Type": CONTENT_TYPE})

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
            self.requests.labels(request.method, route, status).inc()
            self.latency.labels(request.method, route).observe(time.perf_counter() - started)

    # -- garbage collection -------------------------------------------------------------

    def record_gc(self, report: GCReport) -> None:
        """Count one collection."""
        self.gc_runs.inc()
        self.gc_pause.observe(report.pause_seconds)
        self.gc_duration.observe(report.total_seconds)
        for kind, removed in report.removed.items():
            self.gc_removed.labels(kind).inc(removed.records + removed.disk)
            self.gc_removed_bytes.labels(kind).inc(removed.bytes)

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
