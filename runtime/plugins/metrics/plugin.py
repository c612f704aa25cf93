"""Registrations of ``metrics.prometheus`` and its route set ``api.metrics``.

``metrics.prometheus`` owns the registry, follows ``/gc/run`` and, when
``address`` is set, serves ``GET /metrics`` on a listener of its own (no
token: bind it to loopback or a trusted network). ``api.metrics`` adds
``GET /v1/metrics`` to the admin API and the middleware counting requests;
it is a separate route set so that the API server, which starts after every
``api.*`` plugin, finds the middleware when it builds its app.
"""

from __future__ import annotations

from collections.abc import Iterator

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.plugins.api.api import Route, RouteSet, RouteSetWithMiddlewares, route_set
from runtime.plugins.metrics.service import PrometheusMetrics

__all__ = ["MetricsConfig", "moorage_plugins"]

class MetricsConfig(PluginConfig):
    """``[plugins."metrics.prometheus"]``.

    Attributes:
        address: ``host:port`` of a separate listener serving ``GET /metrics``
            without a token, e.g. ``"127.0.0.1:9338"``; empty: none (the
            admin API's ``GET /v1/metrics`` is always there).
    """

    address: str = ""


async def init(ctx: InitContext[MetricsConfig]) -> PrometheusMetrics:
    """The registry, the GC follower and the optional listener."""
    metrics = PrometheusMetrics(ctx.plugins, ctx.events)
    await ctx.start(metrics.follow_gc, name="metrics.prometheus gc follower")
    if ctx.config.address:
        await metrics.listen(ctx.config.address)
    return metrics


async def close(metrics: PrometheusMetrics) -> None:
    """Stop the separate listener."""
    await metrics.aclose()


def metrics_routes(metrics: PrometheusMetrics) -> RouteSet:
    """``GET /v1/metrics`` and the request-counting middleware."""
    return RouteSetWithMiddlewares(
        [Route("GET", "/v1/metrics", metrics.handle,
               "Daemon, task, content, snapshot, GC and API figures (Prometheus text).",
               stream="text/plain", tags=("metrics",))],
        [metrics.middleware],
    )


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """Prometheus metrics and their route."""
    yield Registration.named(
        "metrics.prometheus", init, close=close, config=MetricsConfig,
        description="Prometheus metrics: tasks, content, snapshots, GC, API, events, plugins")
    yield route_set("metrics", ("metrics.prometheus",), "GET /v1/metrics",
                    "runtime.plugins.metrics.plugin:metrics_routes")
