"""Attachment records: what ``network.cni`` keeps on disk about each attachment.

A record is written before anything of its attachment is created and removed
once everything is undone (see :mod:`.service`), so it names what a crash may
have left behind; :func:`attachment_of` is the public view of one.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from runtime.plugins.network.api import Attachment, Interface, IPConfig, PortMapping

__all__ = ["AttachmentRecord", "attachment_of", "write_durably"]


class AttachmentRecord(msgspec.Struct, kw_only=True):
    """What is kept on disk about one attachment.

    Attributes:
        namespace: The container's namespace.
        container_id: The container.
        network: The network's name, or ``none``.
        cni_id: ``CNI_CONTAINERID``: unique over namespaces.
        netns: Path of the pinned namespace.
        conflist: The network configuration ADD ran with; DEL runs the same,
            even if the file changed since. ``None`` for ``none``.
        ports: Published ports (``runtimeConfig.portMappings``).
        result: The final ADD result, once ADD finished.
        state: ``adding`` until ADD finished, then ``added``.
        created_at: When the attachment began.
        cni_args: ``CNI_ARGS`` given to every plugin run (ADD and DEL alike),
            e.g. the CRI's ``K8S_POD_NAME``.
        held: The caller detaches it itself: once ADD finished, no start-up
            release undoes it for having no process in its namespace.
    """

    namespace: str
    container_id: str
    network: str
    cni_id: str
    netns: str
    conflist: dict[str, Any] | None = None
    ports: list[PortMapping] = msgspec.field(default_factory=list)
    result: dict[str, Any] | None = None
    state: str = "adding"
    created_at: datetime | None = None
    cni_args: dict[str, str] = msgspec.field(default_factory=dict)
    held: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, container id)``."""
        return (self.namespace, self.container_id)


def write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    ``sync=False`` skips the two fsyncs: a crash of the daemon still leaves the
    old or the new file, a power loss may leave the old one.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if not sync:
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def attachment_of(record: AttachmentRecord) -> Attachment:
    """The public view of ``record``: interfaces and addresses read from its ADD result."""
    result = record.result or {}
    raw_interfaces = result.get("interfaces") or []
    interfaces = [Interface(name=str(i.get("name", "")), mac=str(i.get("mac", "")),
                            sandbox=str(i.get("sandbox", "")))
                  for i in raw_interfaces if isinstance(i, dict)]
    ips = []
    for ip in result.get("ips") or []:
        if not isinstance(ip, dict) or "address" not in ip:
            continue
        index = ip.get("interface")
        name = interfaces[index].name if isinstance(index, int) and \
            0 <= index < len(interfaces) else ""
        ips.append(IPConfig(address=str(ip["address"]), gateway=str(ip.get("gateway", "")),
                            interface=name))
    return Attachment(
        namespace=record.namespace, container_id=record.container_id, network=record.network,
        netns=record.netns, interfaces=interfaces, ips=ips, ports=list(record.ports),
        created_at=record.created_at,
    )  # fmt: skip
