"""Pod sandboxes: run, status, list with filters, stop, remove, and their network."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CRI_NAMESPACE

pytestmark = pytest.mark.root


def _status(cri: Any, sandbox_id: str) -> Any:
    return cri.runtime.PodSandboxStatus(
        cri.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status


def test_run_pod_sandbox_is_ready_with_an_ip_and_its_metadata(cri: Any) -> None:
    sandbox_id, config = cri.run_pod(labels={"app": "web"})
    status = _status(cri, sandbox_id)
    assert status.id == sandbox_id
    assert status.state == cri.pb.SANDBOX_READY
    assert status.metadata == config.metadata
    assert status.labels == {"app": "web"}
    assert status.created_at > 0
    assert status.network.ip.startswith("10.")


def test_stop_pod_sandbox_makes_it_not_ready_and_releases_the_network(cri: Any,
                                                                     cri_daemon: Any) -> None:
    sandbox_id, _ = cri.run_pod()
    netns = cri_daemon.state / "network.cni" / "netns" / f"k8s.io--{sandbox_id}"
    assert netns.exists()
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert _status(cri, sandbox_id).state == cri.pb.SANDBOX_NOTREADY
    assert not netns.exists()
    # Stopping again is fine (the kubelet retries).
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))


def test_remove_pod_sandbox_forgets_it(cri: Any) -> None:
    sandbox_id, _ = cri.run_pod()
    cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    with pytest.raises(grpc.RpcError) as err:
        _status(cri, sandbox_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert cri.runtime.ListPodSandbox(cri.pb.ListPodSandboxRequest()).items == []


def test_stop_and_remove_of_an_unknown_sandbox_succeed(cri: Any) -> None:
    unknown = "0" * 64
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=unknown))
    cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=unknown))


def test_list_pod_sandbox_filters_by_id_state_and_labels(cri: Any) -> None:
    pb = cri.pb
    first, _ = cri.run_pod(labels={"tier": "a"})
    second, _ = cri.run_pod(labels={"tier": "b"})
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=second))

    def ids(**filter_: Any) -> set[str]:
        request = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**filter_))
        return {s.id for s in cri.runtime.ListPodSandbox(request).items}

    assert ids() == {first, second}
    assert ids(id=first) == {first}
    assert ids(label_selector={"tier": "b"}) == {second}
    assert ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY)) == {first}
    assert ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)) == {second}


@pytest.mark.parametrize("missing", ["name", "namespace", "uid"])
def test_run_pod_sandbox_without_metadata_is_invalid_argument(cri: Any, missing: str) -> None:
    config = cri.pod_config()
    setattr(config.metadata, missing, "")
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing in err.value.details()


def test_run_pod_sandbox_with_an_unknown_handler_is_not_found(cri: Any) -> None:
    request = cri.pb.RunPodSandboxRequest(config=cri.pod_config(), runtime_handler="nope")
    with pytest.raises(grpc.RpcError) as err:
        cri.runtime.RunPodSandbox(request)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()


def test_a_pod_name_is_reserved_until_removed_and_a_failed_run_releases_it(cri: Any) -> None:
    config = cri.pod_config()
    sandbox_id, _ = cri.run_pod(config)
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    # A run that fails (an SCTP port here) releases the name it reserved.
    bad = cri.pb.PodSandboxConfig()
    bad.CopyFrom(config)
    bad.port_mappings.add(protocol=cri.pb.SCTP, container_port=80, host_port=18080)
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    cri.run_pod(config)


def test_the_infra_process_is_pid_1_and_ends_on_sigterm(cri: Any, cri_daemon: Any) -> None:
    sandbox_id, _ = cri.run_pod()
    # The pod's own process, not a host-wide search: other daemons' pods come and go.
    pid = cri_daemon.client(CRI_NAMESPACE).task(sandbox_id).pid
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"/pause", b"-P"]
    ns_pids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("NSpid:"))
    assert ns_pids.split()[-1] == "1", ns_pids  # PID 1 of the pod's PID namespace
    assert sandbox_id in Path(f"/proc/{pid}/cgroup").read_text()
    # catatonit -P answers SIGTERM: a stop with a grace period ends quickly.
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _status(cri, sandbox_id).state != cri.pb.SANDBOX_NOTREADY \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _status(cri, sandbox_id).state == cri.pb.SANDBOX_NOTREADY


def _host_veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_removing_pods_leaves_no_veth_ip_or_attachment_behind(cri: Any, cri_daemon: Any) -> None:
    before = _host_veths()
    ips = []
    for _ in range(3):
        sandbox_id, _ = cri.run_pod()
        ips.append(_status(cri, sandbox_id).network.ip)
    assert len(_host_veths() - before) == 3
    cri.remove_everything()
    assert _host_veths() - before == set()
    attachments = cri_daemon.root / "network.cni" / "attachments" / "k8s.io"
    assert not attachments.exists() or list(attachments.iterdir()) == []
    ipam = cri_daemon.root / "network.cni" / "ipam"
    assert ipam.is_dir()
    leased = {p.name for p in ipam.rglob("*") if p.is_file()}
    assert not set(ips) & leased
