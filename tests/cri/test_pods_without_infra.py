"""Pods whose PID namespace is not shared run no infra process; bind mounts pin their namespaces.

The kubelet's default (``NamespaceOption.pid = CONTAINER``; ``NODE`` for host
PID) gives a pod no shared PID namespace, so nothing needs a PID 1 of the pod:
its IPC and UTS namespaces are made without a process and pinned on files in
the pod's directory (as CRI-O's ``pinns``), the network namespace is
``network.cni``'s, and containers join them by path. Everything a pod with an
infra process gives its containers holds: the hostname, one IPC namespace for
all containers, the pod's sysctls, ``/dev/shm``; Stop and Remove unpin, and a
restart keeps the pod ready.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.cri.conftest import CRI_NAMESPACE, restart_cri_daemon, wait_for_socket

pytestmark = pytest.mark.root


def _pod(cri: Any, pid: str = "CONTAINER", **modes: str) -> tuple[str, Any]:
    pb = cri.pb
    config = cri.pod_config(hostname="pinned-pod")
    options = config.linux.security_context.namespace_options
    options.pid = getattr(pb, pid)
    for key, value in modes.items():
        setattr(options, key, getattr(pb, value))
    sandbox_id, config = cri.run_pod(config)
    return str(sandbox_id), config


def _container(cri: Any, image: str, pod: tuple[str, Any], *command: str) -> str:
    pb = cri.pb
    config = cri.container_config(image, list(command) or ["sleep", "3600"])
    config.linux.security_context.namespace_options.CopyFrom(
        pod[1].linux.security_context.namespace_options)
    cri.pull(image)
    container_id = cri.create_container(pod[0], pod[1], config)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    return str(container_id)


def _pod_dir(daemon: Any, sandbox_id: str) -> Path:
    return Path(daemon.state) / "cri.v1" / "sandboxes" / sandbox_id


def _task_ids(daemon: Any) -> set[str]:
    client = daemon.client(CRI_NAMESPACE)
    return {t.container_id for t in client.tasks()}


def _ns(cri: Any, container_id: str, kind: str) -> str:
    return bytes(cri.exec(container_id, "readlink", f"/proc/self/ns/{kind}").stdout).decode()


def test_a_pod_with_container_pid_mode_runs_no_infra_yet_shares_ipc_and_hostname(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    pod = _pod(cri)
    first = _container(cri, cri_image, pod)
    second = _container(cri, cri_image, pod, "sleep", "3601")
    # No task of the pod's own: only its two containers run.
    assert _task_ids(cri_daemon) == {first, second}
    status = cri.runtime.PodSandboxStatus(cri.pb.PodSandboxStatusRequest(
        pod_sandbox_id=pod[0])).status
    assert status.state == cri.pb.SANDBOX_READY
    assert status.network.ip
    for container_id in (first, second):
        assert cri.exec(container_id, "hostname").stdout == b"pinned-pod\n"
    # One IPC namespace for the pod, not the host's; each container its own PID 1.
    assert _ns(cri, first, "ipc") == _ns(cri, second, "ipc") != os.readlink("/proc/self/ns/ipc")
    assert _ns(cri, first, "uts") == _ns(cri, second, "uts") != os.readlink("/proc/self/ns/uts")
    assert _ns(cri, first, "pid") != _ns(cri, second, "pid")
    # And one /dev/shm.
    assert cri.exec(first, "sh", "-c", "echo shared > /dev/shm/note").exit_code == 0
    assert cri.exec(second, "cat", "/dev/shm/note").stdout == b"shared\n"


def test_a_pod_with_pid_mode_pod_keeps_its_infra_process(cri: Any, cri_daemon: Any,
                                                        cri_image: str) -> None:
    pod = _pod(cri, "POD")
    container_id = _container(cri, cri_image, pod)
    assert _task_ids(cri_daemon) == {pod[0], container_id}
    assert bytes(cri.exec(container_id, "cat", "/proc/1/cmdline").stdout).startswith(b"/pause")


def test_sysctls_of_a_pod_without_infra_are_set_in_its_namespaces(cri: Any,
                                                                  cri_image: str) -> None:
    pb = cri.pb
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = pb.CONTAINER
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    config.linux.sysctls["fs.mqueue.msg_max"] = "100"
    config.linux.sysctls["net.ipv4.ip_local_port_range"] = "40000 41000"
    container_id = _container(cri, cri_image, cri.run_pod(config))
    assert cri.exec(container_id, "cat", "/proc/sys/kernel/shm_rmid_forced").stdout == b"1\n"
    assert cri.exec(container_id, "cat", "/proc/sys/fs/mqueue/msg_max").stdout == b"100\n"
    ports = cri.exec(container_id, "cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout
    assert ports.split() == [b"40000", b"41000"]


def test_an_unknown_sysctl_fails_the_pod_and_leaves_no_pin(cri: Any, cri_daemon: Any) -> None:
    import grpc

    pb = cri.pb
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = pb.CONTAINER
    config.linux.sysctls["kernel.shm_no_such"] = "1"
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    config.linux.sysctls.clear()
    config.linux.sysctls["net.ipv4.no_such_sysctl"] = "1"
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no_such_sysctl" in (err.value.details() or "")
    assert cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    sandboxes = Path(cri_daemon.state) / "cri.v1" / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


def test_stop_and_remove_unpin_the_namespaces_idempotently(cri: Any, cri_daemon: Any,
                                                           cri_image: str) -> None:
    pb = cri.pb
    pod = _pod(cri)
    _container(cri, cri_image, pod)
    base = _pod_dir(cri_daemon, pod[0])
    pins = [base / "ns" / "ipc", base / "ns" / "uts"]
    assert all(os.path.ismount(p) for p in pins)
    for _ in range(2):
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]))
        assert not any(os.path.ismount(p) for p in pins)
        status = cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=pod[0])).status
        assert status.state == pb.SANDBOX_NOTREADY
    for _ in range(2):
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]))
    assert not base.exists()
    assert str(base) not in Path("/proc/self/mountinfo").read_text()


def test_host_network_and_ipc_pods_without_infra_pin_nothing(cri: Any, cri_daemon: Any,
                                                             cri_image: str) -> None:
    pod = _pod(cri, "NODE", network="NODE", ipc="NODE")
    container_id = _container(cri, cri_image, pod)
    assert not (_pod_dir(cri_daemon, pod[0]) / "ns" / "ipc").exists()
    for kind in ("pid", "ipc", "uts", "net"):
        assert _ns(cri, container_id, kind).strip() == os.readlink(f"/proc/self/ns/{kind}")


def test_a_privileged_pod_without_infra_runs_a_privileged_container(cri: Any,
                                                                    cri_image: str) -> None:
    pb = cri.pb
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = pb.CONTAINER
    config.linux.security_context.privileged = True
    pod = cri.run_pod(config)
    container = cri.container_config(cri_image, ["sleep", "3600"])
    container.linux.security_context.privileged = True
    container.linux.security_context.namespace_options.pid = pb.CONTAINER
    cri.pull(cri_image)
    container_id = cri.create_container(pod[0], pod[1], container)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    assert cri.exec(container_id, "hostname", "renamed").exit_code == 0
    assert cri.exec(container_id, "hostname").stdout == b"renamed\n"


def test_a_pod_without_infra_stays_ready_across_a_daemon_restart(cri: Any, cri_daemon: Any,
                                                                 cri_image: str) -> None:
    pb = cri.pb
    pod = _pod(cri)
    container_id = _container(cri, cri_image, pod)
    restart_cri_daemon(cri_daemon)
    sandboxes = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [(s.id, s.state) for s in sandboxes] == [(pod[0], pb.SANDBOX_READY)]
    # A new container still joins the pinned namespaces.
    second = _container(cri, cri_image, pod, "sleep", "3601")
    assert _ns(cri, second, "ipc") == _ns(cri, container_id, "ipc")
    assert cri.exec(second, "hostname").stdout == b"pinned-pod\n"


def test_a_pod_without_infra_whose_pins_are_gone_is_removed_at_start(cri: Any, cri_daemon: Any,
                                                                     cri_image: str) -> None:
    """What a reboot leaves (no pins, no pod directory), as an infra pod without its task."""
    import shutil

    from runtime.plugins.cri.sandbox_setup import unmount_pod_dir

    pb = cri.pb
    pod = _pod(cri)
    cri_daemon.stop()
    base = _pod_dir(cri_daemon, pod[0])
    unmount_pod_dir(base)
    shutil.rmtree(base)
    cri_daemon.cri_socket.unlink(missing_ok=True)
    cri_daemon.start()
    wait_for_socket(cri_daemon)
    assert cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    cri.run_pod(pod[1])  # its name was released


HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && "
                     "exec httpd -f -p 80 -h /www"]


def test_a_pod_without_infra_has_its_dns_and_answers_at_its_ip_and_host_port(
        cri: Any, cri_image: str) -> None:
    """The kubelet's default pod: DNSConfig in resolv.conf, the pod IP reachable from the host,
    a host port answering on 127.0.0.1, with no infra process holding the network."""
    import socket

    from tests.fixtures.network import http_get

    pb = cri.pb
    config = cri.pod_config(hostname="pinned-web")
    config.linux.security_context.namespace_options.pid = pb.CONTAINER
    config.dns_config.servers.append("10.10.10.10")
    config.dns_config.searches.append("svc.example")
    config.dns_config.options.append("ndots:5")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    config.port_mappings.add(protocol=pb.TCP, container_port=80, host_port=host_port)
    pod = cri.run_pod(config)
    web = _container(cri, cri_image, pod, *HTTPD)
    resolv = bytes(cri.exec(web, "cat", "/etc/resolv.conf").stdout).decode()
    assert "nameserver 10.10.10.10" in resolv and "search svc.example" in resolv
    assert "options ndots:5" in resolv
    assert b"pinned-web" in bytes(cri.exec(web, "cat", "/etc/hosts").stdout)
    ip = cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=pod[0])).status.network.ip
    assert http_get(f"http://{ip}:80/") == "hello-from-pod\n"
    assert http_get(f"http://127.0.0.1:{host_port}/") == "hello-from-pod\n"


def test_pod_sandbox_stats_of_a_pod_without_infra_are_its_containers(cri: Any,
                                                                    cri_image: str) -> None:
    """No infra cgroup to read: the pod's cpu and memory are its containers' sums, with
    non-zero timestamps and usage_nano_cores from the previous sample."""
    import time

    pb = cri.pb
    pod = _pod(cri)
    busy = _container(cri, cri_image, pod, "sh", "-c", "while true; do :; done")
    request = pb.PodSandboxStatsRequest(pod_sandbox_id=pod[0])
    first = cri.runtime.PodSandboxStats(request).stats.linux
    time.sleep(0.5)
    second = cri.runtime.PodSandboxStats(request).stats.linux
    assert second.cpu.timestamp > first.cpu.timestamp > 0 and second.memory.timestamp > 0
    assert [c.attributes.id for c in second.containers] == [busy]
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.usage_nano_cores.value > 0
    assert second.memory.working_set_bytes.value == \
        second.containers[0].memory.working_set_bytes.value > 0
    listed = cri.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [pod[0]]


@pytest.mark.parametrize("before_restart", ["no-container", "container-exited"])
def test_a_pod_without_infra_keeps_its_network_across_a_restart_with_nothing_running(
        cri: Any, cri_daemon: Any, cri_image: str, before_restart: str) -> None:
    """Nothing is in the pod's network namespace (the kubelet has not created a container
    yet, or its only one has exited), yet the pod is ready: a restart keeps its address."""
    from tests.fixtures.network import http_get

    pb = cri.pb
    pod = _pod(cri)
    if before_restart == "container-exited":
        _container(cri, cri_image, pod, "true")
    ip = cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=pod[0])).status.network.ip
    assert ip
    restart_cri_daemon(cri_daemon)
    status = cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod[0])).status
    assert (status.state, status.network.ip) == (pb.SANDBOX_READY, ip)
    web = _container(cri, cri_image, pod, *HTTPD)
    assert http_get(f"http://{ip}:80/") == "hello-from-pod\n"
    assert bytes(cri.exec(web, "cat", "/sys/class/net/eth0/operstate").stdout).strip() == b"up"
