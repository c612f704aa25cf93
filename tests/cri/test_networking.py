"""Pod networking: DNS config, hostname, /etc/hosts, pod IP and host ports, host network."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.fixtures.network import http_get

pytestmark = pytest.mark.root

HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && "
                     "exec httpd -f -p 80 -h /www"]



def test_dns_config_lands_in_resolv_conf(cri: Any, cri_image: str) -> None:
    config = cri.pod_config()
    config.dns_config.servers.extend(["10.10.10.10", "10.10.10.11"])
    config.dns_config.searches.append("svc.example")
    config.dns_config.options.append("ndots:5")
    pod = cri.run_pod(config)
    _, container_id = cri.run_container(cri_image, pod=pod)
    text = cri.exec(container_id, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.10.10.10" in text and "nameserver 10.10.10.11" in text
    assert "search svc.example" in text
    assert "options ndots:5" in text


def test_the_pod_hostname_is_set_and_in_etc_hosts(cri: Any, cri_image: str) -> None:
    pod = cri.run_pod(hostname="web-0")
    _, container_id = cri.run_container(cri_image, pod=pod)
    assert cri.exec(container_id, "hostname").stdout == b"web-0\n"
    assert b"web-0" in cri.exec(container_id, "cat", "/etc/hosts").stdout
    assert b"HOSTNAME=web-0" in cri.exec(container_id, "env").stdout


def test_a_pod_without_a_hostname_has_the_nodes(cri: Any, cri_image: str) -> None:
    # As containerd's CRI: an empty PodSandboxConfig.hostname means the node's hostname
    # (in the UTS namespace, /etc/hostname and HOSTNAME), not the pod's name.
    pod = cri.run_pod(cri.pod_config("named-pod"))
    _, container_id = cri.run_container(cri_image, pod=pod)
    node = socket.gethostname()
    assert cri.exec(container_id, "hostname").stdout.decode() == f"{node}\n"
    assert cri.exec(container_id, "cat", "/etc/hostname").stdout.decode() == f"{node}\n"
    assert f"HOSTNAME={node}\n" in cri.exec(container_id, "env").stdout.decode()
    assert node in cri.exec(container_id, "cat", "/etc/hosts").stdout.decode()


def test_the_pod_ip_is_reachable_from_the_host(cri: Any, cri_image: str) -> None:
    sandbox_id, _ = cri.run_container(cri_image, HTTPD)
    ip = cri.runtime.PodSandboxStatus(
        cri.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status.network.ip
    assert http_get(f"http://{ip}:80/") == "hello-from-pod\n"


def test_a_host_port_answers_on_127_0_0_1(cri: Any, cri_image: str) -> None:
    config = cri.pod_config()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    config.port_mappings.add(protocol=cri.pb.TCP, container_port=80, host_port=host_port)
    pod = cri.run_pod(config)
    cri.run_container(cri_image, HTTPD, pod=pod)
    assert http_get(f"http://127.0.0.1:{host_port}/") == "hello-from-pod\n"


def test_containers_of_a_pod_share_its_network(cri: Any, cri_image: str) -> None:
    pod = cri.run_pod()
    cri.run_container(cri_image, HTTPD, pod=pod)
    _, client = cri.run_container(cri_image, pod=pod)
    deadline = time.monotonic() + 10
    while True:
        out = cri.exec(client, "wget", "-q", "-O", "-", "http://127.0.0.1:80/").stdout
        if out or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out == b"hello-from-pod\n"


def test_a_host_network_pod_sees_the_host_interfaces(cri: Any, cri_image: str) -> None:
    config = cri.pod_config()
    config.linux.security_context.namespace_options.network = cri.pb.NODE
    pod = cri.run_pod(config)
    status = cri.runtime.PodSandboxStatus(
        cri.pb.PodSandboxStatusRequest(pod_sandbox_id=pod[0])).status
    assert status.network.ip == ""
    _, container_id = cri.run_container(cri_image, pod=pod)
    hostname = cri.exec(container_id, "hostname").stdout.decode().strip()
    assert hostname == socket.gethostname()
    links = cri.exec(container_id, "ip", "-o", "link").stdout.decode()
    assert len(links.splitlines()) > 2  # more than lo and one pod veth
