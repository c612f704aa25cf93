"""The network side of a task: what a runtime calls at task create and delete.

:func:`setup_task_network` reads the container's network mode from its spec
(:data:`~.api.NETWORK_ANNOTATION`), attaches it, points the spec's network
namespace at the attachment's, and writes ``hosts``, ``hostname`` and
``resolv.conf`` into the bundle, bind-mounted read-only over the
container's ``/etc`` files. :func:`teardown_task_network` undoes the
attachment. A spec without the annotation is returned unchanged.

Two modes need no network plugin and make no attachment: ``host`` (no
namespace of its own) and ``none``, for which the OCI runtime makes the
namespace, as for a spec without the annotation, and brings its ``lo`` up
itself (runc's "loopback" network, crun's ``libcrun_configure_network``).
Nothing of a ``none`` container exists outside it: no record, no pinned
namespace, nothing for a crash to leave behind; the namespace goes with
its last process, as under ``ctr run``.

When no network plugin runs, a container asking for a network still runs,
in the unconfigured namespace the OCI runtime makes (as with containerd),
unless it publishes ports: those could not work, so that is an error.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from runtime.core.errors import FailedPrecondition, InvalidArgument, MoorageError
from runtime.plugins.network.api import (
    HOST,
    NETWORK_ANNOTATION,
    NONE,
    PORTS_ANNOTATION,
    Attachment,
    Network,
    decode_ports,
    parse_mode,
)

__all__ = [
    "etc_hosts",
    "resolv_conf",
    "setup_task_network",
    "teardown_task_network",
]

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


def etc_hosts(hostname: str, attachment: Attachment | None, host: bool = False) -> str:
    """The container's ``/etc/hosts``: localhost, and its own addresses under its name.

    With host networking it is the host's file plus the container's name.
    """
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


def resolv_conf(host: bool = False) -> str:
    """The host's ``resolv.conf``; without host networking, loopback servers removed.

    A server on the host's loopback (a local cache, systemd-resolved's stub)
    cannot be reached from another network namespace. If none is left,
    systemd-resolved's upstream list is used when there is one.
    """
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
        attachment = await network.attach(namespace, container_id, mode, ports)
    try:
        if attachment is not None:
            _set_network_namespace(spec, {"type": "network", "path": attachment.netns})
        hostname = str(spec.get("hostname") or "")
        files = {"hosts": etc_hosts(hostname, attachment, host=mode == HOST),
                 "hostname": f"{hostname}\n" if hostname else "",
                 "resolv.conf": resolv_conf(host=mode == HOST)}
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
