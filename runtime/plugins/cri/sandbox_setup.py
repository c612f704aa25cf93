"""What a pod sandbox is made of on the host, besides its network: ports, pod files, infra rootfs.

The pod's ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf`` and its
``/dev/shm`` tmpfs live in the sandbox's directory under the plugin's state;
every container of the pod bind-mounts them (see :mod:`.spec`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec

from runtime.api.mounts import Mount
from runtime.core.errors import FailedPrecondition, InvalidArgument
from runtime.pkg.mount import mount_all, unmount
from runtime.plugins.cri import pins
from runtime.plugins.cri import spec as specs
from runtime.plugins.cri.messages import pb
from runtime.plugins.cri.records import SandboxRecord
from runtime.plugins.network.api import Attachment, PortMapping, etc_hosts, resolv_conf

__all__ = ["pinned_kinds", "port_mappings", "remove_files", "unmount_pod_dir", "unmount_shm",
           "write_files", "write_infra_rootfs"]

#: The pod's ``/dev/shm``: 64 MiB, as containerd's and the kubelet's default.
_SHM = Mount(type="tmpfs", source="shm",
             options=["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"])


def port_mappings(config: pb.PodSandboxConfig) -> list[PortMapping]:
    """The pod's published ports (a mapping without a host port is only declared)."""
    ports = []
    for pm in config.port_mappings:
        if not pm.host_port:
            continue  # declared, not published
        if pm.protocol == pb.SCTP:
            raise InvalidArgument("SCTP port mappings are not supported")
        # Checked here: portmap would fail late, in iptables, after the address was taken.
        if not (0 < pm.host_port <= 65535 and 0 < pm.container_port <= 65535):
            raise InvalidArgument(f"port mapping {pm.host_port}:{pm.container_port}: ports "
                                  "are 1 to 65535")
        try:
            ports.append(PortMapping(host_port=pm.host_port, container_port=pm.container_port,
                                     protocol="udp" if pm.protocol == pb.UDP else "tcp",
                                     host_ip=pm.host_ip))
        except (msgspec.ValidationError, ValueError) as exc:
            raise InvalidArgument(f"port mapping {pm.host_port}:{pm.container_port}: "
                                  f"{exc}") from None
    return ports


def write_files(record: SandboxRecord, config: pb.PodSandboxConfig,
                attachment: Attachment | None) -> bool:
    """Write the pod's files (``attachment`` None: host networking); True if /dev/shm is mounted."""
    base = Path(record.dir)
    base.mkdir(parents=True, exist_ok=True, mode=0o711)
    host_net = attachment is None
    hostname = specs.pod_hostname(config)
    (base / "hostname").write_text(hostname + "\n")
    (base / "hosts").write_text(etc_hosts(hostname, attachment, host=host_net))
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        lines = [f"nameserver {s}" for s in dns.servers]
        if dns.searches:
            lines.append("search " + " ".join(dns.searches))
        if dns.options:
            lines.append("options " + " ".join(dns.options))
        text = "\n".join(lines) + "\n"
    else:
        text = resolv_conf(host=host_net)
    (base / "resolv.conf").write_text(text)
    for name in ("hostname", "hosts", "resolv.conf"):
        (base / name).chmod(0o644)
    if config.linux.security_context.namespace_options.ipc == pb.NODE:
        return False
    shm = base / "shm"
    shm.mkdir(exist_ok=True)
    # mount(2) from this thread: no mount(8) process per pod.
    mount_all([_SHM], shm)
    return True


def unmount_shm(shm: Path) -> None:
    """Detach a pod's ``/dev/shm`` if it is mounted (its containers may still hold it)."""
    if os.path.ismount(shm):
        unmount(shm, detach=True)


def pinned_kinds(config: pb.PodSandboxConfig) -> tuple[str, ...]:
    """The namespaces a pod without infra pins: IPC unless the host's, UTS unless host network.

    A pod with a user namespace pins it and both of them, with or without infra.
    """
    modes = config.linux.security_context.namespace_options
    kinds = tuple(kind for kind, host in ((pins.IPC, modes.ipc == pb.NODE),
                                          (pins.UTS, modes.network == pb.NODE)) if not host)
    if specs.pod_user_namespace(config) is not None:
        return (pins.USER, *kinds)
    return kinds


def unmount_pod_dir(base: Path) -> None:
    """Detach a pod directory's ``/dev/shm`` and pinned namespaces, whichever are mounted."""
    unmount_shm(base / "shm")
    pins.unpin(base)


def remove_files(record: SandboxRecord) -> None:
    """Unmount the pod's /dev/shm and pinned namespaces and remove its directory; idempotent."""
    if not record.dir:
        return
    base = Path(record.dir)
    # Mounted even when the record does not say so (a crash before it was saved).
    unmount_pod_dir(base)
    shutil.rmtree(base, ignore_errors=True)


def write_infra_rootfs(rootfs: Path, infra_binary: str) -> None:
    """The infra process's read-only root filesystem: its binary and empty mount points."""
    for sub in ("proc", "dev", "sys", "etc"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    binary = shutil.which(infra_binary) or infra_binary
    if not Path(binary).is_file():
        raise FailedPrecondition(
            f"infra process {infra_binary!r} not found (apt-get install catatonit)")
    target = rootfs / specs.INFRA_BINARY.lstrip("/")
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(binary, tmp)
    tmp.chmod(0o755)
    tmp.rename(target)
