"""Route set ``api.gc``: run a garbage collection now and return its figures."""

from __future__ import annotations

from runtime.pkg.http import web
from runtime.plugins.api.api import Route, RouteSet
from runtime.plugins.gc.api import Collections, GCReport

__all__ = ["gc_routes"]


def gc_routes(scheduler: Collections) -> RouteSet:
    """Routes over the ``gc.scheduler`` service."""

    async def collect(request: web.Request) -> GCReport:
        # Every namespace is collected: the namespace header plays no part here.
        report: GCReport = await scheduler.collect()
        return report

    return [
        Route(
            "POST",
            "/v1/gc",
            collect,
            "Collect garbage now (every namespace); waits for the run and returns its figures.",
            response=GCReport,
        ),
    ]
