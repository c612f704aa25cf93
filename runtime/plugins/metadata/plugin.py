"""Registration of ``metadata.sqlite``."""

from __future__ import annotations

from collections.abc import Iterator

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, Registration
from runtime.plugins.api.api import optional_service, required_services, route_set
from runtime.plugins.metadata.api import Metadata
from runtime.plugins.metadata.db import Database
from runtime.plugins.metadata.store import MetadataStore


class MetadataConfig(PluginConfig):
    """``[plugins."metadata.sqlite"]``."""

    #: SQLite's ``synchronous`` pragma: FULL survives power loss, NORMAL only crashes.
    synchronous: str = "FULL"


async def init(ctx: InitContext[MetadataConfig]) -> Metadata:
    """Open the database under the plugin's root and migrate it."""
    if ctx.config.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ValueError(
            f"synchronous must be FULL, NORMAL or EXTRA, not {ctx.config.synchronous!r}"
        )
    db = Database(ctx.root / "meta.db", synchronous=ctx.config.synchronous.upper())
    db.open()
    return MetadataStore(db, ctx.publish)


async def close(store: MetadataStore) -> None:
    """Close the database."""
    store.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The SQLite metadata store."""
    yield Registration.named("metadata.sqlite", init, close=close, config=MetadataConfig,
                             description="namespaced records in one SQLite database (WAL)")
    yield route_set("namespaces", ("metadata.sqlite",), "namespaces",
                    "runtime.plugins.metadata.routes:namespace_routes")
    yield route_set(
        "leases", ("metadata.sqlite",), "leases",
        "runtime.plugins.metadata.lease_routes:lease_routes",
        lambda ctx: (*required_services(ctx), optional_service(ctx, "gc.scheduler")),
    )
