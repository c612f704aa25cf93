"""Registry client library: talk to OCI distribution registries (no plugin here).

The images plugin pulls and pushes through :class:`RegistryClient`::

    async with RegistryClient(hosts_dir=certs_d, credentials=Credentials()) as client:
        ref = parse_reference("busybox")
        desc, host = await client.resolve(ref)
        manifest = await client.fetch_manifest(ref, desc)
        async with client.fetch_blob(ref, layer) as stream:
            async for chunk in stream:
                ...  # write into the content store, which checks the digest

Modules: :mod:`.reference` (names), :mod:`.types` (descriptors, media types),
:mod:`.hosts` (``hosts.toml``), :mod:`.auth` (credentials and tokens),
:mod:`.transport`, :mod:`.fetch` and :mod:`.push` (HTTP), :mod:`.client` (all three in one
class). aiohttp makes the client asyncio-only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.pkg.registry.auth import Credentials
    from runtime.pkg.registry.client import (
        BLOB_CHUNK_SIZE,
        BlobStream,
        RegistryClient,
    )
    from runtime.pkg.registry.hosts import HostConfig, load_hosts
    from runtime.pkg.registry.reference import Reference, parse_reference
    from runtime.pkg.registry.types import MAX_MANIFEST_SIZE, Descriptor, Platform

__all__ = [
    "BLOB_CHUNK_SIZE",
    "MAX_MANIFEST_SIZE",
    "BlobStream",
    "Credentials",
    "Descriptor",
    "HostConfig",
    "Platform",
    "Reference",
    "RegistryClient",
    "load_hosts",
    "parse_reference",
]

# The names resolve on first use: importing one light submodule (``.types``, as
# the images contract does, and through it the CLI's client) runs this file, and
# must not import aiohttp along with ``.auth`` and ``.client``.
_MODULES = {
    "BLOB_CHUNK_SIZE": "client",
    "BlobStream": "client",
    "Credentials": "auth",
    "Descriptor": "types",
    "HostConfig": "hosts",
    "MAX_MANIFEST_SIZE": "types",
    "Platform": "types",
    "Reference": "reference",
    "RegistryClient": "client",
    "load_hosts": "hosts",
    "parse_reference": "reference",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
