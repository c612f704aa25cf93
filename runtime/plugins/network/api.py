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
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import anyio
import anyio.to_thread
import msgspec

from runtime.core.errors import FailedPrecondition, InvalidArgument, MoorageError
from runtime.pkg.netconf import DnsSettings, decode_dns, decode_hosts, free_port

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
    ) -> Attachment:
        """Create the container's network namespace and connect it to ``network``.

        The attachment is recorded durably before this returns, so a daemon
        crash cannot leak it. ``cni_args`` reach every CNI plugin as ``CNI_ARGS``;
        ``conf_dir`` looks ``network`` up in another directory than the plugin's own.

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


def _exposed(annotations: dict[str, Any], ports: list[PortMapping]) -> list[PortMapping]:
    """With ``-P``: the image's exposed ports not published already, on host port 0."""
    from runtime.pkg.oci.spec import EXPOSED_PORTS_ANNOTATION, PUBLISH_ALL_ANNOTATION

    if str(annotations.get(PUBLISH_ALL_ANNOTATION, "")) != "true":
        return []
    published = {(p.container_port, p.protocol) for p in ports}
    found = []
    for item in str(annotations.get(EXPOSED_PORTS_ANNOTATION, "")).split(","):
        port, _, protocol = item.partition("/")
        if port.isdigit() and (int(port), protocol or "tcp") not in published:
            found.append(PortMapping(host_port=0, container_port=int(port),
                                     protocol=protocol or "tcp"))
    return found


def encode_ports(ports: Sequence[PortMapping]) -> str:
    """The :data:`PORTS_ANNOTATION` value for ``ports``."""
    return msgspec.json.encode(list(ports)).decode()


def decode_ports(value: str) -> list[PortMapping]:
    """Ports from a :data:`PORTS_ANNOTATION` value."""
    try:
        return msgspec.json.decode(value or "[]", type=list[PortMapping])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f"annotation {PORTS_ANNOTATION}: {exc}") from None


# -- the network side of a task ---------------------------------------------------
# The network side of a task: what a runtime calls at task create and delete.
#
# :func:`setup_task_network` reads the container's network mode from its spec
# (:data:`~.api.NETWORK_ANNOTATION`), attaches it, points the spec's network
# namespace at the attachment's, and writes ``hosts``, ``hostname`` and
# ``resolv.conf`` into the bundle, bind-mounted read-only over the
# container's ``/etc`` files. :func:`teardown_task_network` undoes the
# attachment. A spec without the annotation is returned unchanged.
#
# Two modes need no network plugin and make no attachment: ``host`` (no
# namespace of its own) and ``none``, for which the OCI runtime makes the
# namespace, as for a spec without the annotation, and brings its ``lo`` up
# itself (runc's "loopback" network, crun's ``libcrun_configure_network``).
# Nothing of a ``none`` container exists outside it: no record, no pinned
# namespace, nothing for a crash to leave behind; the namespace goes with
# its last process, as under ``ctr run``.
#
# When no network plugin runs, a container asking for a network still runs,
# in the unconfigured namespace the OCI runtime makes (as with containerd),
# unless it publishes ports: those could not work, so that is an error.

log = logging.getLogger("moorage.network")

HOST_HOSTS = Path("/etc/hosts")
HOST_RESOLV = Path("/etc/resolv.conf")
# systemd-resolved's list of real upstream servers, used when /etc/resolv.conf
# only names its loopback stub (unreachable from a container's namespace).
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")

_LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
_FILES = {"hosts": "/etc/hosts", "hostname": "/etc/hostname", "resolv.conf": "/etc/resolv.conf"}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def etc_hosts(hostname: str, attachment: Attachment | None, host: bool = False,
              extra: Sequence[tuple[str, str]] = ()) -> str:
    """The container's ``/etc/hosts``: localhost, and its own addresses under its name.

    With host networking it is the host's file plus the container's name.
    ``extra`` (``--add-host``) lines come last.
    """
    return _etc_hosts(hostname, attachment, host) + "".join(
        f"{ip}\t{name}\n" for name, ip in extra)


def _etc_hosts(hostname: str, attachment: Attachment | None, host: bool) -> str:
    if host:
        text = _read(HOST_HOSTS)
        if text and not text.endswith("\n"):
            text += "\n"
        names = {w for line in text.splitlines() for w in line.split("#")[0].split()[1:]}
        if hostname and hostname not in names:
            text += f"127.0.1.1\t{hostname}\n"
        return text or _LOCALHOST
    lines = [_LOCALHOST]
    for ip in attachment.ips if attachment else []:
        if hostname:
            lines.append(f"{ip.ip}\t{hostname}\n")
    return "".join(lines)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_conf(host: bool = False, dns: DnsSettings | None = None) -> str:
    """The host's ``resolv.conf``; without host networking, loopback servers removed.

    A server on the host's loopback (a local cache, systemd-resolved's stub)
    cannot be reached from another network namespace. If none is left,
    systemd-resolved's upstream list is used when there is one. ``dns``
    (``--dns``, ``--dns-search``, ``--dns-option``) replaces the lines of each
    kind it gives, as Docker does.
    """
    text = _host_resolv_conf(host)
    if dns is None:
        return text
    kinds = {"nameserver": [f"nameserver {s}" for s in dns.servers],
             "search": [f"search {' '.join(dns.search)}"] if dns.search else [],
             "options": [f"options {' '.join(dns.options)}"] if dns.options else []}
    lines = [line for line in text.splitlines()
             if not (line.split()[:1] and kinds.get(line.split()[0]))]
    for added in kinds.values():
        lines.extend(added)
    return "\n".join(lines) + "\n" if lines else ""


def _host_resolv_conf(host: bool) -> str:
    text = _read(HOST_RESOLV)
    if host:
        return text

    def filtered(source: str) -> tuple[list[str], int]:
        kept, servers = [], 0
        for line in source.splitlines():
            fields = line.split()
            if fields[:1] == ["nameserver"] and len(fields) > 1:
                if _is_loopback(fields[1]):
                    continue
                servers += 1
            kept.append(line)
        return kept, servers

    lines, servers = filtered(text)
    if servers == 0 and RESOLVED_UPSTREAM.is_file():
        lines, servers = filtered(_read(RESOLVED_UPSTREAM))
    return "\n".join(lines) + "\n" if lines else ""


def _set_network_namespace(spec: dict[str, Any], namespace: dict[str, str] | None) -> None:
    """Replace the spec's network namespace entry (``None``: none, the host's namespace).

    Changes only what :func:`_copy_for_network` copied.
    """
    linux = spec["linux"]
    namespaces = [n for n in linux.get("namespaces", []) if n.get("type") != "network"]
    if namespace is not None:
        namespaces.append(namespace)
    linux["namespaces"] = namespaces


def _copy_for_network(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` whose namespace list and mounts can be replaced or added to.

    Only the containers along those paths are copied (the caller's spec stays
    as it was): a deep copy of a whole spec cost 0.4 ms of the event loop's
    time per task.
    """
    copied = dict(spec)
    copied["linux"] = dict(spec.get("linux") or {})
    copied["mounts"] = list(spec.get("mounts") or [])
    return copied


def _write_files(bundle: Path, files: dict[str, str]) -> None:
    bundle.mkdir(parents=True, exist_ok=True, mode=0o711)
    for name, text in files.items():
        target = bundle / name
        target.write_text(text)
        target.chmod(0o644)


def _add_mounts(spec: dict[str, Any], bundle: Path) -> None:
    mounts = spec.setdefault("mounts", [])
    taken = {m.get("destination") for m in mounts}
    for name, destination in _FILES.items():
        # A user's own mount of the file wins, as in Docker.
        if destination not in taken:
            mounts.append({"destination": destination, "type": "bind",
                           "source": str(bundle / name),
                           "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})


async def setup_task_network(
    network: Network | None,
    namespace: str,
    container_id: str,
    spec: dict[str, Any],
    bundle: Path,
) -> dict[str, Any]:
    """Attach the container as its spec asks; return the spec to run it with.

    Args:
        network: The running network service, or ``None``.
        namespace: The container's namespace.
        container_id: The container.
        spec: Its OCI spec (not modified).
        bundle: The task's bundle directory (the files are written there).

    Raises:
        InvalidArgument: A bad mode or ports annotation, or ports with ``host``
            or ``none``.
        FailedPrecondition: Ports asked for, but no network plugin runs.
        MoorageError: From the network's attach.
    """
    annotations = spec.get("annotations") or {}
    if NETWORK_ANNOTATION not in annotations:
        return spec
    mode = parse_mode(str(annotations[NETWORK_ANNOTATION]))
    ports = decode_ports(str(annotations.get(PORTS_ANNOTATION, "")))
    ports += _exposed(annotations, ports)
    extra_hosts = decode_hosts(str(annotations.get(HOSTS_ANNOTATION, "")), HOSTS_ANNOTATION)
    dns = decode_dns(str(annotations.get(DNS_ANNOTATION, "")), DNS_ANNOTATION)
    spec = _copy_for_network(spec)
    attachment: Attachment | None = None
    if mode == HOST:
        if ports:
            raise InvalidArgument("ports cannot be published with host networking: the "
                                  "container's ports are the host's")
        _set_network_namespace(spec, None)
    elif mode == NONE:
        if ports:
            raise InvalidArgument("ports cannot be published without a network "
                                  f"(network {NONE!r} has loopback only)")
        # A namespace of its own that the OCI runtime makes, lo up (see the module's
        # docstring). Pinning one ourselves, running the loopback plugin and recording
        # it durably cost about 25 ms per container, for nothing anyone outside enters.
        _set_network_namespace(spec, {"type": "network"})
    elif network is None:
        if ports:
            raise FailedPrecondition(f"cannot publish ports of {container_id!r}: "
                                     "no network plugin is running")
        log.warning("container %s asks for network %s but no network plugin is running; "
                    "it gets an unconfigured network namespace", container_id, mode,
                    extra={"namespace": namespace})
    else:
        attachment = await network.attach(namespace, container_id, mode,
                                          assign_host_ports(ports))
    try:
        if attachment is not None:
            _set_network_namespace(spec, {"type": "network", "path": attachment.netns})
        hostname = str(spec.get("hostname") or "")
        files = {"hosts": etc_hosts(hostname, attachment, host=mode == HOST,
                                    extra=extra_hosts),
                 "hostname": f"{hostname}\n" if hostname else "",
                 "resolv.conf": resolv_conf(host=mode == HOST, dns=dns)}
        await anyio.to_thread.run_sync(_write_files, bundle, files)
        _add_mounts(spec, bundle)
    except BaseException:
        if attachment is not None and network is not None:
            with anyio.CancelScope(shield=True):
                await teardown_task_network(network, namespace, container_id)
        raise
    return spec


async def teardown_task_network(network: Network | None, namespace: str,
                                container_id: str) -> None:
    """Detach the container if it is attached; failures are logged, not raised.

    A failed teardown must not keep a task from being deleted: the network
    plugin keeps what it could not undo and retries at its next start.
    """
    if network is None:
        return
    try:
        await network.detach(namespace, container_id)
    except MoorageError as exc:
        log.warning("%s", exc.message, extra={"namespace": namespace})
