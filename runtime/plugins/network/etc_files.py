"""The container's ``/etc/hosts`` and ``/etc/resolv.conf``, made from the host's files.

Both a runtime's task (:mod:`.task`) and a CRI pod sandbox write them; other
plugins reach them through :mod:`.api`, which re-exports :func:`etc_hosts`
and :func:`resolv_conf`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.pkg.netconf import DnsSettings

if TYPE_CHECKING:
    from runtime.plugins.network.api import Attachment

__all__ = ["etc_hosts", "resolv_conf"]

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
