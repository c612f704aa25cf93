"""The CRI side by side: both daemons with their CRI on, images for them, one gRPC client.

* :class:`CriContainerd` - Debian's containerd 1.6 with its CRI plugin
  (``io.containerd.grpc.v1.cri``) on, in a root, state and socket of its own,
  with a CNI conf dir holding a bridge + portmap network (Debian's plugins in
  ``/usr/lib/cni``) and the pod network namespaces under its state directory.
  Its sandbox ("pause") image is built here and imported into its ``k8s.io``
  namespace, so it never pulls from the internet.
* :class:`CriMoorage` - Moorage with ``cri.v1`` enabled (it is off by default)
  and ``network.cni``'s default network made the same way (bridge + portmap,
  no firewall plugin, as containerd's).
* :class:`CriClient` - the generated ``runtime.v1`` stubs of
  ``runtime/plugins/cri/v1`` on one channel: the wire protocol is the one
  containerd's CRI serves, so one client drives both.

Each daemon gets a network lease of the tests' (a bridge and a /24 no other
daemon on the machine uses), released by :meth:`stop`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.daemons import Containerd, Moorage, env_without_proxies
from runtime.plugins.network.cni.conflist import default_conflist
from tests.fixtures.images import BUSYBOX_SOURCE, build_image, busybox_layer, host_platform
from tests.fixtures.network import NetworkLease, lease_network, remove_network

__all__ = ["PAUSE_REF", "CriClient", "CriContainerd", "CriMoorage", "build_pause_layout"]

#: The sandbox image containerd runs as each pod's infra container.
PAUSE_REF = "moorage.local/bench/pause:1"
CATATONIT = "/usr/bin/catatonit"


def build_pause_layout(layout: Path) -> Path:
    """A pause image: busybox-static plus Debian's static ``catatonit -P`` as entrypoint.

    Moorage's pods run that same catatonit as their infra process
    (``sandbox_image = "catatonit"``), so both sides run one infra binary.
    """
    layer = busybox_layer(BUSYBOX_SOURCE)
    layer.copy_file("usr/bin/catatonit", CATATONIT, mode=0o755)
    build_image(layout, (layer,), entrypoint=[CATATONIT, "-P"], cmd=None,
                platform=host_platform(), ref_name=PAUSE_REF)
    return layout


def layout_tar(layout: Path, out: Path) -> Path:
    """The OCI layout as the tar ``ctr images import`` reads."""
    with tarfile.open(out, "w") as tar:
        for child in sorted(layout.iterdir()):
            tar.add(child, arcname=child.name)
    return out


def _write_network(conf_dir: Path, lease: NetworkLease, ipam_dir: Path) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-bench.conflist").write_text(json.dumps(default_conflist(
        name=lease.name, bridge=lease.bridge, subnet=lease.subnet, ipam_dir=ipam_dir,
        firewall=False), indent=2))


def _give_back(lease: NetworkLease | None) -> None:
    """Delete the lease's bridge and leftover rules, and release it."""
    if lease is not None:
        remove_network(lease.name, lease.bridge, lease.subnet)
        lease.release()


class CriContainerd(Containerd):
    """containerd 1.6 with its CRI plugin, a network of its own and a local pause image."""

    name = "containerd"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.cri_socket = self.socket  # the CRI is served on containerd's own socket
        self.lease: NetworkLease | None = None

    def write_config(self) -> None:
        """A version 2 config with CRI on; everything it writes stays under ``base``."""
        self.lease = self.lease or lease_network(f"cd{os.getpid() % 100000}")
        _write_network(self.base / "net.d", self.lease, self.base / "ipam")
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        (self.base / "config.toml").write_text(
            "version = 2\n"
            f'root = "{self.root}"\nstate = "{self.state}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[debug]\n  address = "{self.base / "s" / "debug.sock"}"\n'
            f"{cri}\n"
            f'  sandbox_image = "{PAUSE_REF}"\n'
            # This machine forbids lowering oom_score_adj (runc's write of the
            # pause container's -998 fails with EACCES, "can't get final child's
            # PID"): clamp it at containerd's own, as containerd in a container does.
            "  restrict_oom_score_adj = true\n"
            "  disable_apparmor = true\n"
            "  netns_mounts_under_state_dir = true\n"
            '  stream_server_address = "127.0.0.1"\n'
            '  stream_server_port = "0"\n'
            f"{cri[:-1]}.containerd]\n"
            '  snapshotter = "overlayfs"\n'
            '  default_runtime_name = "runc"\n'
            f"{cri[:-1]}.containerd.runtimes.runc]\n"
            '  runtime_type = "io.containerd.runc.v2"\n'
            f"{cri[:-1]}.cni]\n"
            '  bin_dir = "/usr/lib/cni"\n'
            f'  conf_dir = "{self.base / "net.d"}"\n'
        )

    def k8s_cli(self, *args: str) -> list[str]:
        """``ctr`` in the CRI's namespace."""
        return ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args]

    def import_layout(self, layout: Path) -> None:
        """Import an OCI layout (unpacked for overlayfs) into the ``k8s.io`` namespace."""
        tar = layout_tar(layout, self.base / f"{layout.name}.tar")
        proc = subprocess.run(self.k8s_cli("images", "import", str(tar)), capture_output=True,
                              text=True, env=env_without_proxies())
        if proc.returncode != 0:
            raise RuntimeError(f"ctr images import {tar}: {proc.stderr[-2000:]}")
        tar.unlink()

    def stop(self) -> None:
        """Stop containerd; the network lease (and its bridge) goes back."""
        super().stop()
        _give_back(self.lease)
        self.lease = None


class CriMoorage(Moorage):
    """Moorage with ``cri.v1`` enabled on ``<base>/s/cri.sock``."""

    name = "moorage"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.cri_socket = base / "s" / "cri.sock"
        self.lease: NetworkLease | None = None

    def write_config(self) -> None:
        """plugins.toml with ``cri.v1`` on and a default network of its own."""
        self.lease = self.lease or lease_network(f"mo{os.getpid() % 100000}")
        (self.base / "plugins.toml").write_text(
            f'version = 1\nroot = "{self.root}"\nstate = "{self.state}"\n'
            f'cgroup_parent = "/moorage-bench-cri-{os.getpid()}"\n'
            f'[api]\naddress = "{self.socket}"\n'
            '[plugins."network.cni"]\n'
            f'conf_dir = "{self.base / "net.d"}"\n'
            f'default_network = "{self.lease.name}"\nbridge = "{self.lease.bridge}"\n'
            f'subnet = "{self.lease.subnet}"\nipam_dir = "{self.base / "ipam"}"\n'
            "firewall = false\n"
            '[plugins."cri.v1"]\nenabled = true\n'
            f'address = "{self.cri_socket}"\n'
            'stream_address = "127.0.0.1"\n'
        )

    def ready(self) -> None:
        """Wait for the admin API, then for the CRI socket (it starts after the API)."""
        super().ready()
        deadline = time.monotonic() + 60
        while not self.cri_socket.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cri.v1 did not start; log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the daemon; the network lease (and its bridge) goes back."""
        super().stop()
        _give_back(self.lease)
        self.lease = None


CriDaemon = CriContainerd | CriMoorage


class CriClient:
    """The generated CRI v1 stubs on one channel, and the calls the benchmark makes."""

    def __init__(self, socket_path: Path, log_dir: Path) -> None:
        import grpc

        from runtime.plugins.cri.v1 import api_pb2 as pb
        from runtime.plugins.cri.v1 import api_pb2_grpc as pb_grpc

        self.pb: Any = pb
        self.channel = grpc.insecure_channel(
            f"unix://{socket_path}", options=[("grpc.max_receive_message_length", 16 << 20)])
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.images = pb_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.log_dir = log_dir

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until Status answers with RuntimeReady and NetworkReady."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                status = self.runtime.Status(self.pb.StatusRequest(), timeout=5).status
                ready = {c.type: c.status for c in status.conditions}
                if ready.get("RuntimeReady") and ready.get("NetworkReady"):
                    return
                last = status
            except Exception as exc:  # not serving yet
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"CRI not ready: {last}")

    def pull(self, image: str) -> str:
        """PullImage; returns the image ref."""
        return str(self.images.PullImage(self.pb.PullImageRequest(
            image=self.pb.ImageSpec(image=image))).image_ref)

    #: Pods share their PID namespace (``shareProcessNamespace: true``); the kubelet's
    #: default is not to (``NamespaceOption.pid = CONTAINER``), which this mirrors.
    share_pid = False

    def run_pod_with_container(self, image: str, command: Sequence[str]) -> tuple[str, str]:
        """RunPodSandbox + CreateContainer + StartContainer, as a kubelet's pod worker.

        The namespace options are the kubelet's for a plain pod: ``pid=CONTAINER``
        in the pod's and the container's config (``POD`` with :attr:`share_pid`).
        """
        pb = self.pb
        name = f"bench-{uuid.uuid4().hex[:10]}"
        modes = pb.NamespaceOption(pid=pb.POD if self.share_pid else pb.CONTAINER)
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="default",
                                           uid=uuid.uuid4().hex, attempt=0),
            hostname=name, log_directory=str(self.log_dir / name),
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=modes)))
        sandbox_id = str(self.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config)).pod_sandbox_id)
        container = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=image),
            command=list(command), log_path="main.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=modes)))
        container_id = str(self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container, sandbox_config=config)).container_id)
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
        return sandbox_id, container_id

    def tear_down(self, sandbox_id: str, container_id: str, timeout: int = 10) -> None:
        """StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox; the kubelet's order."""
        pb = self.pb
        self.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id,
                                                           timeout=timeout))
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        self.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def exec_sync(self, container_id: str, cmd: Sequence[str]) -> int:
        """ExecSync; returns the exit code."""
        return int(self.runtime.ExecSync(self.pb.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=10)).exit_code)

    def exec_url(self, container_id: str, cmd: Sequence[str]) -> str:
        """The Exec RPC: the streaming URL of one exec (stdout and stderr, no tty)."""
        return str(self.runtime.Exec(self.pb.ExecRequest(
            container_id=container_id, cmd=list(cmd), stdout=True, stderr=True)).url)

    def remove_everything(self) -> None:
        """Every pod (and its containers) removed; for cleanup after a failure."""
        pb = self.pb
        for sandbox in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox.id))
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id))
