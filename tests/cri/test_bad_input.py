"""Bad input: a clear gRPC status, the daemon stays up, and nothing is left half made.

Each request below is refused with the status the kubelet expects
(INVALID_ARGUMENT for what is malformed or missing, NOT_FOUND for an unknown
handler, sandbox, container or image, ALREADY_EXISTS for a name in use,
FAILED_PRECONDITION for a pod that is not ready) and a message naming what is
wrong. Afterwards the daemon still answers, and what it holds is exactly what
it held before: the same pods and containers (CRI and Moorage records),
snapshots, mounts, network namespaces, attachments, addresses, iptables rules
and pod directories, and the store check finds nothing stray. Some requests
fail only late (a sysctl the kernel does not have fails in the runtime, after
the pod's network was set up): their undoing is what is checked there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CRI_NAMESPACE, CriClient, connected, running_cri_daemon
from tests.fixtures.network import iptables_leftovers
from tests.reliability.store_check import check_store, mounts_under

pytestmark = pytest.mark.root


@dataclass
class Rig:
    """One daemon for the module, with a ready pod and a stopped one to aim requests at."""

    daemon: Any
    cri: CriClient
    image: str
    pod: tuple[str, Any]
    stopped_pod: tuple[str, Any]
    container_name: str
    snapshotter: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, cri_image: str) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("cri-bad-input")
    with running_cri_daemon(tmp / "daemon") as daemon, connected(daemon, tmp / "logs") as cri:
        cri.pull(cri_image)
        pod = cri.run_pod()
        stopped = cri.run_pod()
        cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=stopped[0]))
        config = cri.container_config(cri_image, name="taken")
        container_id = cri.create_container(pod[0], pod[1], config)
        snapshotter = daemon.client(CRI_NAMESPACE).container(container_id).snapshotter
        yield Rig(daemon, cri, cri_image, pod, stopped, "taken", snapshotter)


def _holdings(rig: Rig) -> dict[str, Any]:
    """Everything of the daemon a half-made pod or container would add to."""
    daemon, cri, pb = rig.daemon, rig.cri, rig.cri.pb
    client = daemon.client(CRI_NAMESPACE)

    def names(path: Path) -> set[str]:
        return {p.name for p in path.iterdir()} if path.is_dir() else set()

    network = daemon.network
    return {
        "pods": {(p.id, p.state) for p in
                 cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items},
        "containers": {(c.id, c.state) for c in
                       cri.runtime.ListContainers(pb.ListContainersRequest()).containers},
        "records": {c.id for c in client.containers()},
        "snapshots": {s.name for s in client.snapshots(rig.snapshotter)},
        "mounts": set(mounts_under(daemon.root, daemon.state)),
        "netns": names(daemon.state / "network.cni" / "netns"),
        "attachments": names(daemon.root / "network.cni" / "attachments" / CRI_NAMESPACE),
        "addresses": {p.name for p in (daemon.root / "network.cni" / "ipam").rglob("*")
                      if p.is_file()},
        "rules": set(iptables_leftovers(network.name, network.subnet, check=True)),
        "pod dirs": names(daemon.state / "cri.v1" / "sandboxes"),
    }


Request = Callable[[Rig], Any]


def _run_pod(change: Callable[[Any, Any], None]) -> Request:
    """RunPodSandbox of a fresh config after ``change(config, pb)``."""
    def call(rig: Rig) -> Any:
        config = rig.cri.pod_config()
        change(config, rig.cri.pb)
        return rig.cri.run_pod(config)
    return call


def _create(change: Callable[[Any, Any], None], sandbox: str = "ready") -> Request:
    """CreateContainer in the ready (or stopped) pod of a config after ``change(config, pb)``."""
    def call(rig: Rig) -> Any:
        sandbox_id, sandbox_config = rig.pod if sandbox == "ready" else rig.stopped_pod
        config = rig.cri.container_config(rig.image)
        change(config, rig.cri.pb)
        return rig.cri.create_container(sandbox_id, sandbox_config, config)
    return call


def _no_metadata(config: Any, pb: Any) -> None:
    config.ClearField("metadata")


def _bad_label(config: Any, pb: Any) -> None:
    config.labels[""] = "empty key"


def _sctp(config: Any, pb: Any) -> None:
    config.port_mappings.add(protocol=pb.SCTP, container_port=80, host_port=18080)


def _port_out_of_range(config: Any, pb: Any) -> None:
    config.port_mappings.add(protocol=pb.TCP, container_port=80, host_port=70000)


def _no_container_port(config: Any, pb: Any) -> None:
    config.port_mappings.add(protocol=pb.TCP, container_port=0, host_port=18081)


def _slice_parent(config: Any, pb: Any) -> None:
    config.linux.cgroup_parent = "kubepods.slice"


def _unknown_sysctl(config: Any, pb: Any) -> None:
    config.linux.sysctls["net.ipv4.no_such_sysctl"] = "1"


def _no_infra_unknown_sysctl(key: str) -> Callable[[Any, Any], None]:
    """A pod without infra (its IPC/UTS pinned) with a sysctl the kernel has not."""
    def change(config: Any, pb: Any) -> None:
        config.linux.security_context.namespace_options.pid = pb.CONTAINER
        config.linux.sysctls[key] = "1"
    return change


def _no_uid(config: Any, pb: Any) -> None:
    config.metadata.uid = ""


def _nameless(config: Any, pb: Any) -> None:
    config.metadata.name = ""


def _imageless(config: Any, pb: Any) -> None:
    config.image.image = ""


def _unknown_image(config: Any, pb: Any) -> None:
    config.image.image = "127.0.0.1:1/no/such:image"


def _taken_container_name(config: Any, pb: Any) -> None:
    config.metadata.name = "taken"


def _relative_mount(config: Any, pb: Any) -> None:
    config.mounts.add(container_path="relative/path", host_path="/tmp")


def _privileged(config: Any, pb: Any) -> None:
    config.linux.security_context.privileged = True


def _group_without_user(config: Any, pb: Any) -> None:
    config.linux.security_context.run_as_group.value = 1000


def _relative_seccomp(config: Any, pb: Any) -> None:
    config.linux.security_context.seccomp.profile_type = pb.SecurityProfile.Localhost
    config.linux.security_context.seccomp.localhost_ref = "profiles/mine.json"


def _not_a_device(config: Any, pb: Any) -> None:
    config.devices.add(host_path="/etc/passwd", container_path="/dev/x", permissions="rwm")


def _unknown_handler(rig: Rig) -> Any:
    return rig.cri.runtime.RunPodSandbox(rig.cri.pb.RunPodSandboxRequest(
        config=rig.cri.pod_config(), runtime_handler="no-such-handler"))


def _pod_name_in_use(rig: Rig) -> Any:
    return rig.cri.run_pod(rig.pod[1])


def _in_unknown_sandbox(rig: Rig) -> Any:
    return rig.cri.create_container("ab" * 32, rig.pod[1], rig.cri.container_config(rig.image))


def _start_unknown(rig: Rig) -> Any:
    return rig.cri.runtime.StartContainer(rig.cri.pb.StartContainerRequest(
        container_id="cd" * 32))


def _exec_in_unknown(rig: Rig) -> Any:
    return rig.cri.exec("ef" * 32, "true")


#: (id, request, status, a word the message must contain)
CASES: list[tuple[str, Request, grpc.StatusCode, str]] = [
    ("pod-without-metadata", _run_pod(_no_metadata), grpc.StatusCode.INVALID_ARGUMENT,
     "metadata"),
    ("pod-label-without-key", _run_pod(_bad_label), grpc.StatusCode.INVALID_ARGUMENT, "label"),
    ("pod-unknown-handler", _unknown_handler, grpc.StatusCode.NOT_FOUND, "no-such-handler"),
    ("pod-name-in-use", _pod_name_in_use, grpc.StatusCode.ALREADY_EXISTS, "reserved"),
    ("pod-sctp-port", _run_pod(_sctp), grpc.StatusCode.INVALID_ARGUMENT, "SCTP"),
    ("pod-port-out-of-range", _run_pod(_port_out_of_range), grpc.StatusCode.INVALID_ARGUMENT,
     "70000"),
    ("pod-host-port-without-container-port", _run_pod(_no_container_port),
     grpc.StatusCode.INVALID_ARGUMENT, "18081:0"),
    ("pod-systemd-slice-parent", _run_pod(_slice_parent), grpc.StatusCode.INVALID_ARGUMENT,
     "kubepods.slice"),
    # The runtime refuses it, once the pod's network namespace and address exist.
    ("pod-unknown-sysctl", _run_pod(_unknown_sysctl), grpc.StatusCode.FAILED_PRECONDITION,
     "no_such_sysctl"),
    ("pod-metadata-without-uid", _run_pod(_no_uid), grpc.StatusCode.INVALID_ARGUMENT, "uid"),
    # Pods without infra: the IPC sysctl fails in the pinning thread, the net one after
    # CNI ADD; the pins, network and files made by then are undone.
    ("pod-without-infra-unknown-ipc-sysctl",
     _run_pod(_no_infra_unknown_sysctl("fs.mqueue.no_such")),
     grpc.StatusCode.FAILED_PRECONDITION, "no_such"),
    ("pod-without-infra-unknown-net-sysctl",
     _run_pod(_no_infra_unknown_sysctl("net.ipv4.no_such_sysctl")),
     grpc.StatusCode.FAILED_PRECONDITION, "no_such_sysctl"),
    ("container-without-name", _create(_nameless), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ("container-without-image", _create(_imageless), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ("container-unknown-image", _create(_unknown_image), grpc.StatusCode.NOT_FOUND,
     "no/such:image"),
    ("container-in-unknown-sandbox", _in_unknown_sandbox, grpc.StatusCode.NOT_FOUND, "abab"),
    ("container-in-stopped-sandbox", _create(lambda c, pb: None, sandbox="stopped"),
     grpc.StatusCode.FAILED_PRECONDITION, "not ready"),
    ("container-name-in-use", _create(_taken_container_name), grpc.StatusCode.ALREADY_EXISTS,
     "reserved"),
    ("container-relative-mount", _create(_relative_mount), grpc.StatusCode.INVALID_ARGUMENT,
     "relative/path"),
    ("container-privileged-in-unprivileged-pod", _create(_privileged),
     grpc.StatusCode.INVALID_ARGUMENT, "privileged"),
    ("container-group-without-user", _create(_group_without_user),
     grpc.StatusCode.INVALID_ARGUMENT, "run_as_group"),
    ("container-relative-seccomp-profile", _create(_relative_seccomp),
     grpc.StatusCode.INVALID_ARGUMENT, "profiles/mine.json"),
    ("container-device-that-is-a-file", _create(_not_a_device),
     grpc.StatusCode.INVALID_ARGUMENT, "/etc/passwd"),
    ("start-unknown-container", _start_unknown, grpc.StatusCode.NOT_FOUND, "cdcd"),
    ("exec-in-unknown-container", _exec_in_unknown, grpc.StatusCode.NOT_FOUND, "efef"),
]


@pytest.mark.parametrize(("request_", "code", "word"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_leaves_nothing(
        rig: Rig, request_: Request, code: grpc.StatusCode, word: str) -> None:
    before = _holdings(rig)
    with pytest.raises(grpc.RpcError) as refused:
        request_(rig)
    assert refused.value.code() == code, refused.value.details()
    assert word in (refused.value.details() or ""), refused.value.details()
    assert rig.daemon.running
    rig.cri.runtime.Version(rig.cri.pb.VersionRequest())
    assert _holdings(rig) == before
    assert check_store(rig.daemon).problems == []
