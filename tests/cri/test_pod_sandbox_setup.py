"""What RunPodSandbox makes for a pod besides its processes: CNI_ARGS, /dev/shm, and its undoing.

* every CNI plugin of the pod network gets containerd's CNI_ARGS
  (``IgnoreUnknown=1``, ``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``,
  ``K8S_POD_INFRA_CONTAINER_ID``, ``K8S_POD_UID``);
* each pod has a ``/dev/shm`` of its own, shared by its containers;
* StopPodSandbox runs CNI DEL even when the pod's network namespace is gone,
  and releases the address, the veth and the port rules.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cri.conftest import CRI_NAMESPACE, CriClient, connected, cri_config, running_cri_daemon
from tests.fixtures.network import iptables_leftovers

pytestmark = pytest.mark.root

#: A chained CNI plugin that logs its command and CNI_ARGS and passes the result on.
ARGS_LOGGER = """#!/usr/bin/python3
import json, os, sys
conf = json.load(sys.stdin)
with open(conf["logFile"], "a") as log:
    log.write(json.dumps([os.environ["CNI_COMMAND"], os.environ.get("CNI_ARGS", "")]) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    json.dump(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}, sys.stdout)
"""


@pytest.fixture
def logged_args(tmp_path: Path) -> Iterator[tuple[CriClient, Path]]:
    """A CRI daemon whose pod network ends with the args-logging plugin; its log file."""
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    plugin = bin_dir / "args-logger"
    plugin.write_text(ARGS_LOGGER)
    plugin.chmod(0o755)
    conf_dir = tmp_path / "cri-net.d"
    conf_dir.mkdir()
    log = tmp_path / "cni-args.log"
    config = cri_config(f'cni_conf_dir = "{conf_dir}"\n') + (
        '[plugins."network.cni"]\n'
        f'bin_dirs = ["{bin_dir}", "/usr/lib/cni", "/opt/cni/bin"]\n')
    with running_cri_daemon(tmp_path / "daemon", config) as daemon:
        conflist = json.loads((daemon.root / "net.d" / "10-moorage.conflist").read_text())
        conflist["plugins"].append({"type": "args-logger", "logFile": str(log)})
        (conf_dir / "10-pods.conflist").write_text(json.dumps(conflist))
        with connected(daemon, tmp_path / "logs") as cri:
            yield cri, log


def test_cni_plugins_get_the_pods_cni_args(logged_args: tuple[CriClient, Path]) -> None:
    cri, log = logged_args
    config = cri.pod_config("web-0")
    sandbox_id, _ = cri.run_pod(config)
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [command for command, _ in calls] == ["ADD", "DEL"]
    meta = config.metadata
    for _, args in calls:
        assert dict(pair.split("=", 1) for pair in args.split(";")) == {
            "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": meta.namespace,
            "K8S_POD_NAME": meta.name, "K8S_POD_INFRA_CONTAINER_ID": sandbox_id,
            "K8S_POD_UID": meta.uid}


def test_each_pod_has_its_own_dev_shm_shared_by_its_containers(cri: Any,
                                                                cri_image: str) -> None:
    pod = cri.run_pod()
    _, writer = cri.run_container(cri_image, pod=pod)
    _, reader = cri.run_container(cri_image, pod=pod)
    _, stranger = cri.run_container(cri_image)
    assert cri.exec(writer, "sh", "-c", "echo pod-a > /dev/shm/marker").exit_code == 0
    assert cri.exec(reader, "cat", "/dev/shm/marker").stdout == b"pod-a\n"
    assert cri.exec(stranger, "cat", "/dev/shm/marker").exit_code != 0
    mounts = cri.exec(writer, "cat", "/proc/mounts").stdout.decode().splitlines()
    shm = [line.split() for line in mounts if line.split()[1] == "/dev/shm"]
    assert shm and shm[-1][2] == "tmpfs", shm


@pytest.mark.parametrize("pid_mode", ["POD", "CONTAINER"], ids=["with-infra", "without-infra"])
def test_stop_pod_sandbox_releases_the_network_when_the_netns_is_gone(
        cri: Any, cri_daemon: Any, pid_mode: str) -> None:
    """Without infra nothing else holds the namespace: it is really gone, veth and all."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = getattr(cri.pb, pid_mode)
    config.port_mappings.add(protocol=cri.pb.TCP, container_port=80, host_port=host_port)
    network = cri_daemon.network
    before = set(iptables_leftovers(network.name, network.subnet, check=True))
    sandbox_id, _ = cri.run_pod(config)
    ip = cri.runtime.PodSandboxStatus(cri.pb.PodSandboxStatusRequest(
        pod_sandbox_id=sandbox_id)).status.network.ip
    added = set(iptables_leftovers(network.name, network.subnet, check=True)) - before
    assert any(f"--dports {host_port}" in rule or f"--dport {host_port}" in rule
               for rule in added), added
    # Someone removed the pinned namespace (an infra process still holds it).
    netns = cri_daemon.state / "network.cni" / "netns" / f"{CRI_NAMESPACE}--{sandbox_id}"
    subprocess.run(["umount", str(netns)], check=True)
    netns.unlink()
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    leased = {p.name for p in (cri_daemon.root / "network.cni" / "ipam").rglob("*")
              if p.is_file()}
    assert ip not in leased
    assert not (cri_daemon.root / "network.cni" / "attachments" / CRI_NAMESPACE
                / f"{sandbox_id}.json").exists()
    assert set(iptables_leftovers(network.name, network.subnet, check=True)) == before
    bridge_ports = Path("/sys/class/net", network.bridge, "brif")
    assert not bridge_ports.is_dir() or list(bridge_ports.iterdir()) == []
