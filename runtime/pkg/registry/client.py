"""An OCI distribution client: resolve, fetch and push over aiohttp.

The client is three layers: :mod:`.transport` (sessions, hosts, TLS, auth, the
error vocabulary), :mod:`.fetch` (resolve, manifests, resumable blob streams)
and :mod:`.push` (mounts and uploads). This client runs on asyncio only.
"""

from __future__ import annotations

from typing import final

from runtime.pkg.registry.fetch import BlobStream, RegistryFetcher
from runtime.pkg.registry.push import RegistryPusher
from runtime.pkg.registry.transport import BLOB_CHUNK_SIZE

__all__ = ["BLOB_CHUNK_SIZE", "BlobStream", "RegistryClient"]


@final
class RegistryClient(RegistryFetcher, RegistryPusher):
    """A client of OCI distribution registries, used as ``async with RegistryClient() as c``.

    Arguments are those of :class:`~.transport.RegistryTransport`; reads come from
    :class:`~.fetch.RegistryFetcher`, uploads from :class:`~.push.RegistryPusher`.
    """
