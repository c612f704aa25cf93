"""``RunRequest.image_rootfs``: the daemon finds the image's root filesystem for ``run``.

``moorage run IMAGE`` asked ``GET /v1/images/{name}/rootfs`` first and put what it
answered (the top chain ID, the image's config, the snapshotter) into its run
request: a round trip, and a request's parsing, for every container. With
``image_rootfs`` set the daemon asks the image service itself, in the same
request; the container then is exactly what the two requests made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from runtime.api.constants import MISSING_IMAGE
from runtime.api.containers import RunRequest
from runtime.api.specs import ImageConfig
from runtime.core.errors import NotFound

if TYPE_CHECKING:
    from runtime.plugins.images.api import Images

__all__ = ["with_image_rootfs"]


async def with_image_rootfs(images: Callable[[], Images | None], namespace: str,
                            body: RunRequest) -> RunRequest:
    """``body`` with its root filesystem filled in when it asks for it (else unchanged).

    Raises:
        NotFound: The image (or the image service) is missing: pull it, then ask again.
        FailedPrecondition: The image's blobs are missing from the content store.
    """
    if not body.image_rootfs:
        return body
    service = images()
    container = body.container
    if service is None:
        raise NotFound(f"{MISSING_IMAGE} {container.image!r}: the image service "
                       "(images.store) is not running")
    try:
        chain, config = await service.image_rootfs(namespace, container.image,
                                                   container.snapshotter)
    except NotFound as exc:
        raise NotFound(f"{MISSING_IMAGE} {container.image!r}: {exc.message}") from None
    container = msgspec.structs.replace(
        container, image_config=msgspec.convert(msgspec.to_builtins(config), ImageConfig),
        snapshotter=service.snapshotter(container.snapshotter).name,
        snapshot_key=container.snapshot_key or container.id)
    return msgspec.structs.replace(body, container=container, parent=chain,
                                   image_rootfs=False)
