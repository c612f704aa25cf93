"""Registration of ``content.local``: blobs on local disk, namespaced through metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, Registration
from runtime.plugins.api.api import route_set
from runtime.plugins.content.api import NamespacedContent
from runtime.plugins.content.local.service import ContentService
from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.metadata.api import Metadata


async def init(ctx: InitContext[Any]) -> NamespacedContent:
    """Open the store under the plugin root, on top of the metadata database."""
    metadata: Metadata = ctx.get("metadata.sqlite")
    return ContentService(ContentStore(ctx.root), metadata.db, ctx.publish)


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The local content store."""
    yield Registration.named("content.local", init, requires=("metadata.sqlite",),
                             description="content-addressed blobs with resumable ingests")
    yield route_set("content", ("content.local",), "content and ingests",
                    "runtime.plugins.content.routes:content_routes")
