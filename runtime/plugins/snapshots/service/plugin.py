"""Registration of ``service.snapshots``: namespaces over every running snapshotter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.core.errors import NotFound
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import route_set
from runtime.plugins.metadata.api import Database, Metadata
from runtime.plugins.snapshots.api import SnapshotCount, Snapshots, Snapshotter
from runtime.plugins.snapshots.service.namespaced import NamespacedSnapshotter
from runtime.plugins.snapshots.service.tables import count_snapshots

__all__ = ["SnapshotService"]


class SnapshotService:
    """Lookup of namespaced snapshotters by name (``overlayfs``, ``native``, ``btrfs``...)."""

    def __init__(
        self, snapshotters: dict[str, NamespacedSnapshotter], default: str, db: Database
    ) -> None:
        self.snapshotters = snapshotters
        self.default = default
        self.db = db

    def get(self, name: str | None = None) -> NamespacedSnapshotter:
        """The snapshotter ``name`` (default: overlayfs when running, else the first)."""
        name = name or self.default
        try:
            return self.snapshotters[name]
        except KeyError:
            raise NotFound(
                f"snapshotter {name!r} is not running; "
                f"running: {', '.join(sorted(self.snapshotters))}"
            ) from None

    async def counts(self) -> list[SnapshotCount]:
        """Records per snapshotter, namespace and kind, stopped snapshotters' included."""
        return await self.db.read(count_snapshots)


async def init(ctx: InitContext[Any]) -> Snapshots:
    """Wrap every running snapshotter."""
    metadata: Metadata = ctx.get("metadata.sqlite")
    backends: dict[str, Snapshotter] = ctx.get_by_type("snapshotter")
    wrapped = {n: NamespacedSnapshotter(n, b, metadata.db, ctx.publish)
               for n, b in backends.items()}
    for snapshotter in wrapped.values():
        # Before anyone is served: records a crash left without backend snapshots.
        await snapshotter.recover()
    default = "overlayfs" if "overlayfs" in wrapped else sorted(wrapped)[0]
    return SnapshotService(wrapped, default, metadata.db)


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The snapshot service."""
    yield Registration.named("service.snapshots", init,
                             requires=("metadata.sqlite", "snapshotter"),
                             description="namespaced snapshots over the snapshotter backends")
    yield route_set("snapshots", ("service.snapshots",), "snapshots",
                    "runtime.plugins.snapshots.routes:snapshot_routes")
