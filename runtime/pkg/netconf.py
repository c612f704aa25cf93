"""Values of a container's network side that need no network plugin: host ports, names.

:func:`free_port` picks the host ports ``-p 80`` and ``-P`` leave to the
daemon; :class:`DnsSettings` and :func:`decode_hosts` read what ``--dns*``
and ``--add-host`` put in the spec (see ``runtime.plugins.network.api``).
"""

from __future__ import annotations

import ipaddress
import socket

import msgspec

from runtime.core.errors import FailedPrecondition, InvalidArgument

__all__ = ["DnsSettings", "decode_dns", "decode_hosts", "free_port"]


def free_port(protocol: str, host_ip: str, taken: set[tuple[str, int]]) -> int:
    """A port the kernel finds free for ``protocol`` on ``host_ip`` (not in ``taken``)."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    for _ in range(20):
        with socket.socket(family, kind) as probe:
            probe.bind((host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
            port = int(probe.getsockname()[1])
        if (protocol, port) not in taken:
            return port
    raise FailedPrecondition(f"no free {protocol} host port found on {host_ip or 'the host'}")


class DnsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What replaces parts of the host's ``resolv.conf`` (``--dns``, ``--dns-search``...)."""

    servers: list[str] = msgspec.field(default_factory=list)
    search: list[str] = msgspec.field(default_factory=list)
    options: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for server in self.servers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidArgument(f"dns server {server!r} is not an IP address") from None
        for word in [*self.search, *self.options]:
            if not word or any(c.isspace() for c in word):
                raise InvalidArgument(f"dns search or option {word!r}: one word each")


def decode_dns(value: str, where: str = "dns settings") -> DnsSettings | None:
    """A :class:`DnsSettings` JSON value; ``None`` when empty."""
    if not value:
        return None
    try:
        return msgspec.json.decode(value, type=DnsSettings)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def decode_hosts(value: str, where: str = "extra hosts") -> list[tuple[str, str]]:
    """``(name, ip)`` pairs of a JSON list of ``"NAME:IP"``."""
    try:
        entries = msgspec.json.decode(value or "[]", type=list[str])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    found = []
    for entry in entries:
        name, _, address = entry.partition(":")
        try:
            ip = str(ipaddress.ip_address(address))
        except ValueError:
            raise InvalidArgument(f"{where}: {entry!r}: expected NAME:IP") from None
        if not name or any(c.isspace() or c == "#" for c in name):
            raise InvalidArgument(f"{where}: {entry!r}: expected NAME:IP")
        found.append((name, ip))
    return found
