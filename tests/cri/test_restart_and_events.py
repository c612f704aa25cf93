"""Pods survive a daemon restart; GetContainerEvents streams container lifecycle events.

Across a restart, running pods stay listed and ready, their containers running (exec
works), their names reserved, their host ports published and their logs written.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import restart_cri_daemon, wait_for_socket
from tests.fixtures.network import http_get, iptables_leftovers

pytestmark = pytest.mark.root


def test_running_pods_keep_running_across_a_daemon_restart(cri: Any, cri_daemon: Any,
                                                           cri_image: str) -> None:
    pb = cri.pb
    sandbox_id, container_id = cri.run_container(cri_image)
    restart_cri_daemon(cri_daemon)
    sandboxes = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [(s.id, s.state) for s in sandboxes] == [(sandbox_id, pb.SANDBOX_READY)]
    containers = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [(c.id, c.state) for c in containers] == [(container_id, pb.CONTAINER_RUNNING)]
    assert cri.exec(container_id, "echo", "still-here").stdout == b"still-here\n"
    # And the names are still reserved.
    status = cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
    assert status.network.ip


@pytest.mark.parametrize("pid_mode", ["POD", "CONTAINER"], ids=["with-infra", "without-infra"])
def test_running_pods_keep_running_through_a_daemon_kill_9(cri: Any, cri_daemon: Any,
                                                          cri_image: str, pid_mode: str) -> None:
    """SIGKILL of the daemon (no shutdown at all): the pod is listed and ready after the
    restart, its container runs on with the same pid, and stop + remove leave nothing."""
    from tests.cri.conftest import CRI_NAMESPACE
    from tests.reliability.store_check import mounts_under

    pb = cri.pb
    config = cri.pod_config(hostname="survivor")
    config.linux.security_context.namespace_options.pid = getattr(pb, pid_mode)
    pod = cri.run_pod(config)
    mounts_before = set(mounts_under(cri_daemon.root, cri_daemon.state))
    container = cri.container_config(cri_image)
    container.linux.security_context.namespace_options.pid = getattr(pb, pid_mode)
    cri.pull(cri_image)
    container_id = cri.create_container(pod[0], config, container)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    pid = cri_daemon.client(CRI_NAMESPACE).task(container_id).pid
    cri_daemon.kill()
    cri_daemon.cri_socket.unlink(missing_ok=True)
    cri_daemon.start()
    wait_for_socket(cri_daemon)
    sandboxes = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [(s.id, s.state) for s in sandboxes] == [(pod[0], pb.SANDBOX_READY)]
    containers = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [(c.id, c.state) for c in containers] == [(container_id, pb.CONTAINER_RUNNING)]
    assert cri_daemon.client(CRI_NAMESPACE).task(container_id).pid == pid
    assert cri.exec(container_id, "hostname").stdout == b"survivor\n"
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]))
    left = set(mounts_under(cri_daemon.root, cri_daemon.state))
    assert left <= mounts_before
    assert not [m for m in left if pod[0] in m or container_id in m], left
    assert not list((cri_daemon.state / "network.cni" / "netns").iterdir())


def test_after_a_restart_names_stay_reserved_host_ports_answer_and_logs_flow(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    pb = cri.pb
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    config = cri.pod_config()
    config.port_mappings.add(protocol=pb.TCP, container_port=80, host_port=host_port)
    network = cri_daemon.network
    rules_before = set(iptables_leftovers(network.name, network.subnet, check=True))
    pod = cri.run_pod(config)
    container = cri.container_config(cri_image, [
        "sh", "-c", "mkdir -p /www && echo web > /www/index.html && httpd -p 80 -h /www && "
                    "while true; do echo tick; sleep 0.2; done"], name="web")
    cri.pull(cri_image)
    container_id = cri.create_container(pod[0], config, container)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    log = Path(cri.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=container_id)).status.log_path)

    restart_cri_daemon(cri_daemon)

    for again in (lambda: cri.run_pod(config),
                  lambda: cri.create_container(pod[0], config, container)):
        with pytest.raises(grpc.RpcError) as taken:
            again()
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert http_get(f"http://127.0.0.1:{host_port}/") == "web\n"
    size = log.stat().st_size
    deadline = time.monotonic() + 10
    while log.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.stat().st_size > size  # conmon kept the log while the daemon was away
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]))
    assert set(iptables_leftovers(network.name, network.subnet, check=True)) == rules_before
    cri.run_pod(config)  # the name was released with the pod



def test_get_container_events_reports_created_started_stopped_deleted_not_execs(cri: Any,
                                                                      cri_image: str) -> None:
    pb = cri.pb
    events: list[Any] = []
    stream = cri.runtime.GetContainerEvents(pb.GetEventsRequest())
    done = threading.Event()

    def read() -> None:
        try:
            for event in stream:
                events.append(event)
                if event.container_event_type == pb.CONTAINER_DELETED_EVENT:
                    break
        except Exception:
            pass
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)  # let the subscription start
    sandbox_id, container_id = cri.run_container(cri_image)
    # An exec's exit and delete are not the container's.
    assert cri.exec(container_id, "true").exit_code == 0
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=1))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
    done.wait(15)
    stream.cancel()
    mine = [e for e in events if e.container_id == container_id]
    assert [e.container_event_type for e in mine] == [
        pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT]
    assert all(e.created_at > 0 for e in mine)
    assert mine[1].pod_sandbox_status.id == sandbox_id
