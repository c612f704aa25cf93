"""CNI configuration lists: find them in ``conf_dir``, and write the default one.

A *conflist* (``*.conflist``) is ``{"cniVersion", "name", "plugins": [...]}``;
a single-plugin ``*.conf`` / ``*.json`` file is accepted too and read as a
list of one, as libcni does. Files are read in name order and the first one
with a given ``name`` wins.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import msgspec

from runtime.core.errors import InvalidArgument, NotFound
from runtime.plugins.network.cni.invoke import version_tuple

__all__ = [
    "DEFAULT_FILE",
    "ConfList",
    "check_subnet",
    "default_conflist",
    "find_conflist",
    "first_conflist",
    "list_conflists",
    "parse_subnet",
    "write_default",
]

#: The file name of the default network's conflist.
DEFAULT_FILE = "10-moorage.conflist"
_SUFFIXES = (".conflist", ".conf", ".json")
#: Oldest result format we chain: 0.3.0 introduced ``interfaces`` and ``ips``.
_OLDEST = (0, 3, 0)


class ConfList(msgspec.Struct, frozen=True):
    """One network: its name, CNI version and plugin configurations, in order.

    Attributes:
        name: The network's name.
        cni_version: The ``cniVersion`` every plugin is run with.
        plugins: Each plugin's configuration as in the file (``type`` and its own keys).
        source: The file it came from.
    """

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """The conflist as a JSON object (kept with an attachment for its DEL)."""
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": list(self.plugins)}

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> ConfList:
        """Read a conflist or a single-plugin configuration.

        Raises:
            InvalidArgument: Not a usable network configuration; names ``source``.
        """
        where = source or "network configuration"
        if not isinstance(data, dict):
            raise InvalidArgument(f"{where}: not a JSON object")
        name, version = data.get("name"), str(data.get("cniVersion", ""))
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{where}: missing \"name\"")
        if "plugins" in data:
            plugins = data["plugins"]
        elif "type" in data:
            plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
        else:
            raise InvalidArgument(f"{where}: neither \"plugins\" nor \"type\"")
        if not isinstance(plugins, list) or not plugins or not all(
                isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
            raise InvalidArgument(f"{where}: \"plugins\" must list objects with a \"type\"")
        if version_tuple(version) < _OLDEST:
            raise InvalidArgument(
                f"{where}: cniVersion {version or 'missing'} is not supported (0.3.0 or later)"
            )
        return cls(name=name, cni_version=version, plugins=tuple(plugins), source=source)


def _files(conf_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in conf_dir.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    except FileNotFoundError:
        return []


def list_conflists(conf_dir: Path) -> dict[str, ConfList]:
    """Every readable network in ``conf_dir`` by name; broken files are left out."""
    found: dict[str, ConfList] = {}
    for path in _files(conf_dir):
        try:
            conf = ConfList.from_json(json.loads(path.read_text()), str(path))
        except (OSError, ValueError):
            continue
        found.setdefault(conf.name, conf)
    return found


def first_conflist(conf_dir: Path) -> ConfList | None:
    """The first usable network in ``conf_dir`` in file-name order, or None.

    Broken files are passed over, as libcni does when it loads the pod network
    of containerd's CRI.
    """
    for path in _files(conf_dir):
        try:
            return ConfList.from_json(json.loads(path.read_text()), str(path))
        except (OSError, ValueError):
            continue
    return None


def find_conflist(conf_dir: Path, name: str) -> ConfList:
    """The network ``name``.

    Raises:
        NotFound: No file defines it; the message lists those that exist.
        InvalidArgument: The file that names it is broken.
    """
    for path in _files(conf_dir):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("name") == name:
            return ConfList.from_json(data, str(path))
    known = ", ".join(sorted(list_conflists(conf_dir))) or "none"
    raise NotFound(f"network {name!r} not found in {conf_dir} (networks: {known})")


def default_conflist(
    *, name: str, bridge: str, subnet: str, ipam_dir: Path, firewall: bool, gateway: str = ""
) -> dict[str, Any]:
    """The default network: a bridge with host-local addresses, published ports, a firewall.

    The gateway is ``gateway``, else the subnet's first address, on the bridge.
    ``ipMasq`` lets containers reach beyond the host through NAT, as nerdctl's
    default network does. (``network create`` makes its networks the same way.)
    """
    net = ipaddress.ip_network(subnet)
    gateway = gateway or str(next(net.hosts()))
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(net), "gateway": gateway}]],
                "routes": [{"dst": "0.0.0.0/0" if net.version == 4 else "::/0"}],
                "dataDir": str(ipam_dir),
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    if firewall:
        plugins.append({"type": "firewall"})
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


def write_default(conf_dir: Path, conflist: dict[str, Any]) -> Path:
    """Write the default conflist atomically; returns its path."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / DEFAULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(conflist, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _host_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    """IPv4 routes of the main table as ``(device, destination)`` (``/proc/net/route``)."""
    routes: list[tuple[str, ipaddress.IPv4Network]] = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        # Little-endian hex, as the kernel prints them.
        dest = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
        routes.append((fields[0], ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
    return routes


def parse_subnet(subnet: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The subnet, if it can be a default network's: a private network address, 4 addresses or more.

    What holds on any host; :func:`check_subnet` adds this host's routes.

    Raises:
        InvalidArgument: Saying which of these it is not.
    """
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as exc:
        raise InvalidArgument(f"subnet {subnet!r}: {exc}") from None
    if not net.is_private:
        raise InvalidArgument(f"subnet {net} is not a private range")
    if net.num_addresses < 4:
        raise InvalidArgument(f"subnet {net} is too small for a gateway and a container")
    return net


def check_subnet(subnet: str, bridge: str) -> str:
    """Refuse a subnet that :func:`parse_subnet` refuses or that overlaps a host route.

    Routes through ``bridge`` itself (left from an earlier run) and the
    default route are fine. Returns the normalised subnet.

    Raises:
        InvalidArgument: Naming the overlapping route.
    """
    net = parse_subnet(subnet)
    if isinstance(net, ipaddress.IPv4Network):
        for device, route in _host_routes():
            if device == bridge or route.prefixlen == 0:
                continue
            if route.overlaps(net):
                raise InvalidArgument(
                    f"subnet {net} overlaps the host route {route} on {device}; "
                    "choose another subnet in the plugin's configuration"
                )
    return str(net)
