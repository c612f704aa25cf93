"""The network contract: port mappings, attachments, network modes and the ``Network`` protocol.

A container chooses its network through the OCI spec annotation
:data:`NETWORK_ANNOTATION` (``moorage run --net``), one of:

* ``bridge`` - the plugin's default network (a bridge with host-local IPAM);
* ``host`` - no network namespace: the task shares the host's;
* ``none`` - a network namespace with only the loopback interface;
* any other name - the CNI configuration list of that name.

A spec without the annotation is left as its author wrote it (containerd's
behaviour: the runtime makes an unconfigured network namespace). Published
ports travel in :data:`PORTS_ANNOTATION` as a JSON list of
:class:`PortMapping`.

This module needs msgspec and nothing else, so the CLI can import it cheaply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Annotated, Protocol

import msgspec

from runtime.core.errors import InvalidArgument

__all__ = [
    "BRIDGE",
    "HOST",
    "NETWORK_ANNOTATION",
    "NONE",
    "PORTS_ANNOTATION",
    "Attachment",
    "IPConfig",
    "Interface",
    "Network",
    "PortMapping",
    "decode_ports",
    "encode_ports",
    "parse_mode",
    "parse_publish",
]

#: Spec annotation naming the container's network mode.
NETWORK_ANNOTATION = "io.moorage.network"
#: Spec annotation holding the published ports, a JSON list of :class:`PortMapping`.
PORTS_ANNOTATION = "io.moorage.ports"

BRIDGE = "bridge"
HOST = "host"
NONE = "none"

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class PortMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One published port (``-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]``).

    Attributes:
        host_port: The port on the host.
        container_port: The port inside the container.
        protocol: ``tcp`` or ``udp``.
        host_ip: The host address to publish on; empty means every address.
    """

    host_port: Port
    container_port: Port
    protocol: str = "tcp"
    host_ip: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise InvalidArgument(f"port protocol {self.protocol!r}: use tcp or udp")
        if self.host_ip:
            try:
                ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise InvalidArgument(f"host address {self.host_ip!r} is not an IP") from None

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"


class Interface(msgspec.Struct, frozen=True, kw_only=True):
    """A network interface a CNI plugin created or configured.

    Attributes:
        name: Interface name (``eth0``, ``moorage0``, ``veth1a2b3c4d``).
        mac: Hardware address, when the plugin reported one.
        sandbox: The network namespace path for an interface inside the
            container; empty for one on the host (the bridge, a veth's host end).
    """

    name: str
    mac: str = ""
    sandbox: str = ""


class IPConfig(msgspec.Struct, frozen=True, kw_only=True):
    """An address given to the container.

    Attributes:
        address: The address with its prefix length (``10.88.0.2/16``).
        gateway: The gateway, if any.
        interface: Name of the interface carrying it (``eth0``).
    """

    address: str
    gateway: str = ""
    interface: str = ""

    @property
    def ip(self) -> str:
        """The address without its prefix length."""
        return self.address.partition("/")[0]


class Attachment(msgspec.Struct, kw_only=True):
    """A container's network namespace and what the network set up in it.

    Attributes:
        namespace: The container's namespace.
        container_id: The container.
        network: The network's name, or ``none`` for loopback only.
        netns: Path of the network namespace (a bind-mounted nsfs file).
        interfaces: Interfaces created, on the host and in the namespace.
        ips: Addresses given to the container.
        ports: Published ports.
        created_at: When the attachment was made.
    """

    namespace: str
    container_id: str
    network: str
    netns: str
    interfaces: list[Interface] = msgspec.field(default_factory=list)
    ips: list[IPConfig] = msgspec.field(default_factory=list)
    ports: list[PortMapping] = msgspec.field(default_factory=list)
    created_at: datetime | None = None

    @property
    def host_interfaces(self) -> list[str]:
        """Names of the interfaces on the host side (the bridge and veth ends)."""
        return [i.name for i in self.interfaces if not i.sandbox]


class Network(Protocol):
    """What a ``network.*`` plugin provides to the runtime."""

    async def attach(
        self,
        namespace: str,
        container_id: str,
        network: str = BRIDGE,
        ports: Sequence[PortMapping] = (),
    ) -> Attachment:
        """Create the container's network namespace and connect it to ``network``.

        The attachment is recorded durably before this returns, so a daemon
        crash cannot leak it.

        Raises:
            AlreadyExists: The container is already attached.
            NotFound: No network of that name.
            InvalidArgument: ``host``, or ports with ``none``.
        """
        ...

    async def detach(self, namespace: str, container_id: str) -> None:
        """Disconnect the container and remove its namespace; nothing to do is not an error."""
        ...

    async def get(self, namespace: str, container_id: str) -> Attachment:
        """The container's attachment; NotFound if it has none."""
        ...

    async def cleanup_stale(self, live: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        """Detach every attachment whose ``(namespace, container id)`` is not in ``live``.

        Returns:
            The keys detached.
        """
        ...


def parse_mode(text: str) -> str:
    """A ``--net`` value: ``bridge``, ``host``, ``none`` or a network name."""
    value = text.strip()
    if not value or not all(c.isalnum() or c in "._-" for c in value):
        raise InvalidArgument(f"network {text!r}: use bridge, host, none or a network name")
    return value


def parse_publish(text: str) -> PortMapping:
    """``[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]`` as ``-p`` takes it.

    An IPv6 host address goes in brackets: ``[::1]:8080:80``.
    """
    spec, _, protocol = text.strip().partition("/")
    host_ip = ""
    if spec.startswith("["):
        host_ip, sep, spec = spec[1:].partition("]:")
        if not sep:
            raise InvalidArgument(f"-p {text!r}: expected [HOST_IP]:HOST_PORT:CONTAINER_PORT")
    parts = spec.split(":")
    if len(parts) == 3 and not host_ip:
        host_ip, *parts = parts
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidArgument(
            f"-p {text!r}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]"
        )
    try:
        return msgspec.convert(
            {"host_port": int(parts[0]), "container_port": int(parts[1]),
             "protocol": protocol or "tcp", "host_ip": host_ip},
            PortMapping,
        )  # fmt: skip
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"-p {text!r}: {exc}") from None


def encode_ports(ports: Sequence[PortMapping]) -> str:
    """The :data:`PORTS_ANNOTATION` value for ``ports``."""
    return msgspec.json.encode(list(ports)).decode()


def decode_ports(value: str) -> list[PortMapping]:
    """Ports from a :data:`PORTS_ANNOTATION` value."""
    try:
        return msgspec.json.decode(value or "[]", type=list[PortMapping])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f"annotation {PORTS_ANNOTATION}: {exc}") from None
