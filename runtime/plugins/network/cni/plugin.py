"""Registrations of ``network.cni`` (config in, a :class:`CniNetwork` out) and ``api.networks``.

On first start the plugin writes the default network's conflist (unless a
file in ``conf_dir`` already defines a network of that name), then releases
the attachments of containers that stopped while the daemon was away.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec

from runtime.core.config import AbsolutePath
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration
from runtime.plugins.api.api import route_set
from runtime.plugins.network.api import Network
from runtime.plugins.network.cni.conflist import (
    DEFAULT_FILE,
    check_subnet,
    default_conflist,
    list_conflists,
    parse_subnet,
    write_default,
)
from runtime.plugins.network.cni.invoke import find_plugin
from runtime.plugins.network.cni.service import CniNetwork

__all__ = ["CniConfig", "moorage_plugins"]

_NAME = msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CniConfig(PluginConfig):
    """``[plugins."network.cni"]``.

    Attributes:
        conf_dir: Where the networks' conflists live; default ``<root>/net.d``.
        bin_dirs: Where the CNI plugin binaries are, searched in order.
        default_network: The network ``--net bridge`` (the default) stands for.
            The CNI plugins name their iptables chains after it and the
            container id: two daemons on one host need different names.
        bridge: The default network's bridge device.
        subnet: The default network's subnet: a private network address
            (checked with the file) clear of the host's routes (checked when
            the conflist is written).
        ipam_dir: host-local's address store; default ``<plugin root>/ipam``.
        firewall: Add the ``firewall`` plugin to the default network.
        timeout: Seconds each CNI plugin run may take.
    """

    conf_dir: AbsolutePath = ""
    bin_dirs: list[AbsolutePath] = msgspec.field(
        default_factory=lambda: ["/usr/lib/cni", "/opt/cni/bin"])
    default_network: Annotated[str, _NAME] = "moorage"
    bridge: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,15}$")] = "moorage0"
    # nerdctl's default range; it must not collide with the host's routes (checked).
    subnet: str = "10.88.0.0/16"
    ipam_dir: AbsolutePath = ""
    firewall: bool = True
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        # What holds on any host, so that `moorage config check` finds a typo; the
        # host's routes are checked at start, where they matter.
        parse_subnet(self.subnet)


async def init(ctx: InitContext[CniConfig]) -> Network:
    """Find the plugins, write the default network, clean up after a crash."""
    config = ctx.config
    if os.geteuid() != 0:
        raise PluginSkipped("network namespaces need root")
    bin_dirs = [Path(d) for d in config.bin_dirs if Path(d).is_dir()]
    try:
        find_plugin("loopback", bin_dirs)
    except LookupError:
        raise PluginSkipped(
            f"CNI plugins not found in {', '.join(config.bin_dirs)} "
            "(apt-get install containernetworking-plugins)"
        ) from None
    conf_dir = Path(config.conf_dir) if config.conf_dir else Path(ctx.daemon.root) / "net.d"
    # Never over an operator's file, even a broken one: only a missing network is written.
    ipam_dir = Path(config.ipam_dir) if config.ipam_dir else ctx.root / "ipam"
    has_firewall = config.firewall and _has(bin_dirs, "firewall")
    if (config.default_network not in list_conflists(conf_dir)
            and not (conf_dir / DEFAULT_FILE).exists()):
        subnet = check_subnet(config.subnet, config.bridge)
        write_default(conf_dir, default_conflist(
            name=config.default_network, bridge=config.bridge, subnet=subnet,
            ipam_dir=ipam_dir, firewall=has_firewall))
    netns_dir = ctx.state / "netns"
    netns_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    service = CniNetwork(conf_dir=conf_dir, bin_dirs=bin_dirs,
                         default_network=config.default_network,
                         records_dir=ctx.root / "attachments", netns_dir=netns_dir,
                         timeout=config.timeout, ipam_dir=ipam_dir, firewall=has_firewall)
    # Nothing is being created yet, so a namespace no process is in belongs to a
    # container that is gone: release its addresses, veths and port mappings.
    await service.release_at_startup()
    return service


def _has(bin_dirs: list[Path], type_: str) -> bool:
    try:
        find_plugin(type_, bin_dirs)
    except LookupError:
        return False
    return True


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The CNI network plugin."""
    yield Registration.named(
        "network.cni", init, config=CniConfig,
        description="container networks through CNI plugins (bridge, host-local, portmap)")
    yield route_set("networks", ("network.cni",), "networks and attachments",
                    "runtime.plugins.network.routes:network_routes")
