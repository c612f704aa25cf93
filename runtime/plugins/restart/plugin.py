"""Registration of ``containers.restart``: the restart manager (see :mod:`.manager`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import msgspec

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration

if TYPE_CHECKING:
    from runtime.plugins.metadata.api import Metadata
    from runtime.plugins.restart.manager import RestartManager

__all__ = ["RestartConfig", "moorage_plugins"]


class RestartConfig(PluginConfig):
    """``[plugins."containers.restart"]``.

    Attributes:
        backoff: Seconds before the first restart of a container; doubled for
            each restart after it.
        max_backoff: The longest delay between two restarts, in seconds.
        subscribe_delay: Seconds after startup before the manager listens for exits
            (keep it at least runtime.runc's exit_publish_grace; a scan covers the gap).
    """

    backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    max_backoff: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    subscribe_delay: Annotated[float, msgspec.Meta(ge=0)] = 10.0


async def init(ctx: InitContext[RestartConfig]) -> RestartManager:
    """The manager, following exits in the daemon's task group."""
    from runtime.plugins.restart.manager import RestartManager

    metadata: Metadata = ctx.get("metadata.sqlite")

    async def namespaces() -> list[str]:
        return [ns.name for ns in await metadata.namespaces.list()]

    manager = RestartManager(ctx.get("service.tasks"), namespaces, ctx.events,
                             backoff=ctx.config.backoff, max_backoff=ctx.config.max_backoff,
                             subscribe_delay=ctx.config.subscribe_delay)
    if ctx.events is not None:
        await ctx.start(manager.follow, name="containers.restart exit follower")
    return manager


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """Declare ``containers.restart``."""
    yield Registration.named(
        "containers.restart", init, config=RestartConfig,
        requires=("service.tasks", "metadata.sqlite"),
        description="restart policies (--restart) and removal at exit (run -d --rm)")
