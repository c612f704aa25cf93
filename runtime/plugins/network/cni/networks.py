"""User-defined networks: ``moorage network create`` and ``rm`` as conflists in ``conf_dir``.

A created network is a bridge network shaped like the default one (host-local
addresses, published ports, firewall), written to ``60-<name>.conflist``.
Only such files are removed by ``rm``: a network an operator wrote stays the
operator's, and so does the default network. A network is not removed while a
container (of any namespace) is attached to it.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated

import anyio
import msgspec

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from runtime.plugins.network.api import BRIDGE, HOST, NONE
from runtime.plugins.network.cni.conflist import (
    check_subnet,
    default_conflist,
    find_conflist,
    list_conflists,
)
from runtime.plugins.network.cni.service import CniNetwork

__all__ = ["CREATED_PREFIX", "NetworkCreateRequest", "create_network", "remove_network"]

#: File name prefix of the conflists ``network create`` writes.
CREATED_PREFIX = "60-"
#: Where subnets are picked from when ``create`` names none: a /24 each.
AUTO_RANGE = ipaddress.IPv4Network("10.90.0.0/16")
_NAME = msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class NetworkCreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/networks``.

    Attributes:
        name: The network's name (``--net NAME``).
        subnet: Its private subnet; empty: a free /24 of 10.90.0.0/16.
        gateway: The bridge's address in the subnet; empty: the first one.
        bridge: The bridge device (15 bytes at most); empty: ``br-`` and a hash.
    """

    name: Annotated[str, _NAME]
    subnet: str = ""
    gateway: str = ""
    bridge: str = ""


def _subnets(conf_dir: Path) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    found = []
    for conf in list_conflists(conf_dir).values():
        for plugin in conf.plugins:
            for group in (plugin.get("ipam") or {}).get("ranges") or []:
                for entry in group:
                    try:
                        found.append(ipaddress.ip_network(str(entry.get("subnet", ""))))
                    except ValueError:
                        continue
    return found


def _bridges(conf_dir: Path) -> set[str]:
    return {str(p.get("bridge")) for c in list_conflists(conf_dir).values() for p in c.plugins
            if p.get("type") == "bridge"}


def _pick_subnet(conf_dir: Path, bridge: str) -> str:
    taken = _subnets(conf_dir)
    for net in AUTO_RANGE.subnets(new_prefix=24):
        if any(net.overlaps(t) for t in taken if t.version == 4):
            continue
        try:
            return check_subnet(str(net), bridge)
        except InvalidArgument:
            continue
    raise FailedPrecondition(f"no free /24 left in {AUTO_RANGE}; give --subnet")


def _write(conf_dir: Path, request: NetworkCreateRequest, ipam_dir: Path,
           firewall: bool) -> NetworkCreateRequest:
    if request.name in (BRIDGE, HOST, NONE) or request.name in list_conflists(conf_dir):
        raise AlreadyExists(f"network {request.name!r} already exists")
    import hashlib

    bridge = request.bridge or "br-" + hashlib.sha256(request.name.encode()).hexdigest()[:12]
    if len(bridge) > 15 or not all(c.isalnum() or c in "_.-" for c in bridge):
        raise InvalidArgument(f"bridge {bridge!r}: 15 letters, digits, '.', '_' or '-' at most")
    if bridge in _bridges(conf_dir):
        raise AlreadyExists(f"bridge {bridge!r} belongs to another network")
    if request.subnet:
        subnet = check_subnet(request.subnet, bridge)
        net = ipaddress.ip_network(subnet)
        clash = next((t for t in _subnets(conf_dir) if t.version == net.version
                      and t.overlaps(net)), None)  # type: ignore[arg-type]
        if clash is not None:
            raise InvalidArgument(f"subnet {subnet} overlaps the network with subnet {clash}")
    else:
        subnet = _pick_subnet(conf_dir, bridge)
    net = ipaddress.ip_network(subnet)
    gateway = request.gateway
    if gateway:
        try:
            address = ipaddress.ip_address(gateway)
        except ValueError:
            raise InvalidArgument(f"gateway {gateway!r} is not an IP address") from None
        if address not in net or address in (net.network_address, net.broadcast_address):
            raise InvalidArgument(f"gateway {gateway} is not a host address of {subnet}")
    conflist = default_conflist(name=request.name, bridge=bridge, subnet=subnet,
                                ipam_dir=ipam_dir, firewall=firewall, gateway=gateway)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"{CREATED_PREFIX}{request.name}.conflist"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(conflist, indent=2) + "\n")
    os.replace(tmp, path)
    return NetworkCreateRequest(name=request.name, subnet=subnet,
                                gateway=gateway or str(next(net.hosts())), bridge=bridge)


async def create_network(service: CniNetwork, request: NetworkCreateRequest, *,
                         ipam_dir: Path, firewall: bool) -> NetworkCreateRequest:
    """Write the network's conflist; the request as made (subnet, gateway, bridge filled).

    Raises:
        AlreadyExists: A network (or bridge) of that name exists.
        InvalidArgument: A bad subnet (public, overlapping a route or a network), gateway
            or bridge name.
    """
    async with service.admin_lock:
        return await anyio.to_thread.run_sync(_write, service.conf_dir, request, ipam_dir,
                                              firewall)


async def remove_network(service: CniNetwork, name: str) -> None:
    """Remove a network ``create`` made.

    Raises:
        NotFound: No such network.
        FailedPrecondition: The default network, one an operator wrote, or one
            containers are attached to (named in the message).
    """
    async with service.admin_lock:
        if name in (BRIDGE, service.default_network):
            raise FailedPrecondition(f"network {name!r} is the default network; it stays")
        conf = await anyio.to_thread.run_sync(find_conflist, service.conf_dir, name)
        path = Path(conf.source)
        if not path.name.startswith(CREATED_PREFIX) or path.parent != service.conf_dir:
            raise FailedPrecondition(
                f"network {name!r} is defined by {conf.source}, not by network create; "
                "remove that file by hand")
        users = sorted(f"{a.container_id}" + (f" (namespace {a.namespace})"
                                              if a.namespace != "default" else "")
                       for a in await service.attachments() if a.network == name)
        if users:
            raise FailedPrecondition(
                f"network {name!r} is in use by container {', '.join(users)}")
        await anyio.to_thread.run_sync(path.unlink)
