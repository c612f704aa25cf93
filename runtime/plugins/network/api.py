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

The records and parsers here need msgspec and nothing else; the task side
(:mod:`.task`) and the ``/etc`` files (:mod:`.etc_files`) are re-exported
at the end, as other plugins may import only this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Protocol

import msgspec

from runtime.core.errors import InvalidArgument
from runtime.pkg.netconf import free_port

__all__ = [
    "BRIDGE",
    "DNS_ANNOTATION",
    "HOST",
    "HOSTS_ANNOTATION",
    "NETWORK_ANNOTATION",
    "NONE",
    "PORTS_ANNOTATION",
    "Attachment",
    "IPConfig",
    "Interface",
    "Network",
    "PortMapping",
    "assign_host_ports",
    "decode_ports",
    "encode_ports",
    "etc_hosts",
    "parse_mode",
    "parse_publish",
    "resolv_conf",
    "setup_task_network",
    "teardown_task_network",
]

#: Spec annotation naming the container's network mode.
NETWORK_ANNOTATION = "io.moorage.network"
#: Spec annotation holding the published ports, a JSON list of :class:`PortMapping`.
PORTS_ANNOTATION = "io.moorage.ports"
#: Spec annotation with extra ``/etc/hosts`` entries: a JSON list of ``"NAME:IP"``.
HOSTS_ANNOTATION = "io.moorage.extra-hosts"
#: Spec annotation replacing parts of ``resolv.conf``: JSON ``{"servers", "search",
#: "options"}``, each a list of strings (a missing or empty one keeps the host's).
DNS_ANNOTATION = "io.moorage.dns"

BRIDGE = "bridge"
HOST = "host"
NONE = "none"

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
#: A host port; 0 asks the network side for a free one (``-p 80``, ``-P``).
HostPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class PortMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One published port (``-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]``).

    Attributes:
        host_port: The port on the host; 0 before :func:`assign_host_ports` picks one.
        container_port: The port inside the container.
        protocol: ``tcp`` or ``udp``.
        host_ip: The host address to publish on; empty means every address.
    """

    host_port: HostPort
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
    """What a ``network.*`` plugin provides to the runtime, the CRI and the metrics."""

    @property
    def conf_dir(self) -> Path:
        """Where the networks' configuration lists are."""
        ...

    def networks(self) -> list[str]:
        """Names of the networks configured (none: the network is not ready)."""
        ...

    def first_network(self, conf_dir: Path) -> str | None:
        """The first usable network configuration in ``conf_dir`` (the CRI's), or None."""
        ...

    async def attach(
        self,
        namespace: str,
        container_id: str,
        network: str = BRIDGE,
        ports: Sequence[PortMapping] = (),
        cni_args: Mapping[str, str] | None = None,
        conf_dir: Path | None = None,
        netns_ready: Callable[[str], object] | None = None,
        netns_source: str | None = None,
        held: bool = False,
    ) -> Attachment:
        """Create the container's network namespace and connect it to ``network``.

        The attachment is recorded durably before this returns, so a daemon
        crash cannot leak it. ``cni_args`` reach every CNI plugin as ``CNI_ARGS``;
        ``conf_dir`` looks ``network`` up in another directory than the plugin's own.
        ``netns_ready(path)`` is called once the namespace exists, before the
        network's plugins run in it: a process may join it from then on.
        ``netns_source`` (a ``/proc/PID/ns/net`` or pinned file) is a namespace
        the caller made, used instead of a new one (a pod's, owned by its user
        namespace): it is pinned on the attachment's own path like a new one,
        and detach unpins it the same way.

        ``held``: the caller keeps the attachment until it detaches it, even
        while no process is in its namespace (a pod sandbox without an infra
        process, before its first container or after its last one exited). A
        daemon start then leaves it alone once its ADD had finished; the
        caller's own start-up recovery detaches what it no longer has.

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

    async def attachments(self) -> list[Attachment]:
        """Every attachment, sorted by namespace and container id."""
        ...

    async def cleanup_stale(self, live: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        """Detach every attachment whose ``(namespace, container id)`` is not in ``live``.

        Held attachments (see :meth:`attach`) whose ADD had finished are left alone.

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
    """``[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]`` as ``-p`` takes it.

    No host port (``80``, ``127.0.0.1::80``) or host port 0 means one the
    network picks at task create (host port 0 here), as with Docker. An IPv6
    host address goes in brackets: ``[::1]:8080:80``.
    """
    expected = "expected [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]"
    spec, _, protocol = text.strip().partition("/")
    host_ip = ""
    if spec.startswith("["):
        host_ip, sep, spec = spec[1:].partition("]:")
        if not sep:
            raise InvalidArgument(f"-p {text!r}: {expected}")
    parts = spec.split(":")
    if len(parts) == 3 and not host_ip:
        host_ip, *parts = parts
    if len(parts) == 1 and not host_ip:
        parts = ["0", *parts]
    elif len(parts) == 2 and parts[0] == "" and host_ip:
        parts[0] = "0"  # HOST_IP::CONTAINER_PORT
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidArgument(f"-p {text!r}: {expected}")
    try:
        return msgspec.convert(
            {"host_port": int(parts[0]), "container_port": int(parts[1]),
             "protocol": protocol or "tcp", "host_ip": host_ip},
            PortMapping,
        )  # fmt: skip
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"-p {text!r}: {exc}") from None


def assign_host_ports(ports: Sequence[PortMapping]) -> list[PortMapping]:
    """``ports`` with each host port 0 replaced by a free port of the host.

    The port is one the kernel hands out for binding (its ephemeral range, the
    range Docker picks from too); the mapping itself is NAT, not a socket.
    """
    taken = {(p.protocol, p.host_port) for p in ports if p.host_port}
    out = []
    for mapping in ports:
        if mapping.host_port == 0:
            port = free_port(mapping.protocol, mapping.host_ip, taken)
            taken.add((mapping.protocol, port))
            mapping = msgspec.structs.replace(mapping, host_port=port)
        out.append(mapping)
    return out


def encode_ports(ports: Sequence[PortMapping]) -> str:
    """The :data:`PORTS_ANNOTATION` value for ``ports``."""
    return msgspec.json.encode(list(ports)).decode()


def decode_ports(value: str) -> list[PortMapping]:
    """Ports from a :data:`PORTS_ANNOTATION` value."""
    try:
        return msgspec.json.decode(value or "[]", type=list[PortMapping])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f"annotation {PORTS_ANNOTATION}: {exc}") from None


# The task side and the /etc files live in their own modules; re-exported here,
# after the records they use, because other plugins may import only this module.
from runtime.plugins.network.etc_files import etc_hosts, resolv_conf  # noqa: E402
from runtime.plugins.network.task import setup_task_network, teardown_task_network  # noqa: E402
