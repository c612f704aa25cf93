"""Registration of ``service.tasks`` (task calls routed to runtimes) and of ``api.tasks``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import optional_service, route_set

if TYPE_CHECKING:
    from runtime.plugins.snapshots.api import Snapshots
    from runtime.plugins.tasks.api import Tasks


async def init(ctx: InitContext[Any]) -> Tasks:
    """The task service over the container store and every running runtime."""
    from runtime.plugins.tasks.service import TaskService

    def snapshots() -> Snapshots | None:
        # Looked up per call: service.snapshots is optional here.
        return ctx.plugins.services.get("service.snapshots")

    return TaskService(ctx.get("containers.store"), ctx.get_by_type("runtime"), snapshots)


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The task service and its routes."""
    yield Registration.named("service.tasks", init, requires=("containers.store", "runtime"),
                             description="task calls routed to the runtime a container names")
    yield route_set(
        "tasks", ("service.tasks",), "tasks: lifecycle, exec, logs, attach, metrics",
        "runtime.plugins.tasks.routes:task_routes",
        lambda ctx: (ctx.get("service.tasks"), ctx.daemon.cgroup_parent,
                     optional_service(ctx, "images.store")),
    )
    yield route_set(
        "archive", ("service.tasks",), "container files as tar, out and in (cp)",
        "runtime.plugins.tasks.archive_routes:archive_routes",
        lambda ctx: (ctx.get("service.tasks"), ctx.state),
    )
    yield route_set(
        "changes", ("service.tasks", "diff.walking", "service.snapshots"),
        "a container's changes as a layer blob (commit)",
        "runtime.plugins.tasks.changes_routes:changes_routes",
        lambda ctx: (ctx.get("service.tasks"), ctx.get("diff.walking"),
                     optional_service(ctx, "service.snapshots")),
    )
