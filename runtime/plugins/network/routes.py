"""Route set ``api.networks``: the networks in ``conf_dir`` and the namespace's attachments.

Besides introspection it has one more job: requiring ``network.cni``, it
makes the API server start only after the network plugin (when that runs),
so no task is created before networks are available.
"""

from __future__ import annotations

import msgspec

from runtime.pkg.http import web
from runtime.plugins.api.api import Route, RouteSet, decode_body, namespace_of
from runtime.plugins.network.api import Attachment
from runtime.plugins.network.cni.conflist import list_conflists
from runtime.plugins.network.cni.networks import (
    NetworkCreateRequest,
    create_network,
    remove_network,
)
from runtime.plugins.network.cni.service import CniNetwork

__all__ = ["NetworkInfo", "network_routes"]


class NetworkInfo(msgspec.Struct, kw_only=True):
    """One network of ``conf_dir``.

    Attributes:
        name: The network's name (``--net NAME``; the default one is also ``bridge``).
        cni_version: Its ``cniVersion``.
        plugins: Its plugins' types, in order.
        source: The file defining it.
        default: Whether ``--net bridge`` means this one.
    """

    name: str
    cni_version: str
    plugins: list[str]
    source: str
    default: bool = False


def network_routes(service: CniNetwork) -> RouteSet:
    """Routes over the CNI network service."""

    async def networks(_: web.Request) -> list[NetworkInfo]:
        found = list_conflists(service.conf_dir)
        return [NetworkInfo(name=c.name, cni_version=c.cni_version,
                            plugins=[str(p["type"]) for p in c.plugins], source=c.source,
                            default=c.name == service.default_network)
                for c in sorted(found.values(), key=lambda c: c.name)]

    async def create(request: web.Request) -> NetworkCreateRequest:
        body = await decode_body(request, NetworkCreateRequest)
        return await create_network(service, body, ipam_dir=service.ipam_dir,
                                    firewall=service.firewall)

    async def delete(request: web.Request) -> None:
        await remove_network(service, request.match_info["name"])

    async def attachments(request: web.Request) -> list[Attachment]:
        namespace = namespace_of(request)
        return [a for a in await service.attachments() if a.namespace == namespace]

    async def attachment(request: web.Request) -> Attachment:
        return await service.get(namespace_of(request), request.match_info["id"])

    return [
        Route("GET", "/v1/networks", networks, "Networks defined in the plugin's conf_dir.",
              response=list[NetworkInfo], tags=("networks",)),
        Route("POST", "/v1/networks", create,
              "Create a bridge network (a conflist in conf_dir); the subnet, gateway and "
              "bridge it got.", body=NetworkCreateRequest, response=NetworkCreateRequest,
              status=201, tags=("networks",)),
        Route("DELETE", "/v1/networks/{name}", delete,
              "Remove a network network create made (refused while containers use it).",
              tags=("networks",)),
        Route("GET", "/v1/networks/attachments", attachments,
              "Network attachments of the namespace's containers.",
              response=list[Attachment], tags=("networks",)),
        Route("GET", "/v1/networks/attachments/{id}", attachment,
              "One container's network attachment (its addresses, interfaces, ports).",
              response=Attachment, tags=("networks",)),
    ]
