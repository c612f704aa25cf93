"""Registration of ``containers.store``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.containers.store import SqliteContainerStore


async def init(ctx: InitContext[Any]) -> SqliteContainerStore:
    """Container records in the metadata plugin's database."""
    events = ctx.events

    def publish(namespace: str, topic: str, event: msgspec.Struct) -> Any:
        return events.publish(namespace, topic, event) if events is not None else None

    return SqliteContainerStore(ctx.get("metadata.sqlite").db, publish)


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The container store."""
    yield Registration(
        type="containers",
        id="store",
        init=init,
        requires=("metadata.sqlite",),
        description="container records (id, image, runtime, OCI spec, snapshot) per namespace",
    )
