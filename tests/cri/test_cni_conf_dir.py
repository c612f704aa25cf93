"""``cni_conf_dir``: where the pods' network configuration comes from, as containerd's CRI.

The pod network is the first usable ``.conflist``/``.conf``/``.json`` file in
the directory, in file-name order (broken files are passed over); while there
is none, Status says NetworkReady false with reason NetworkPluginNotReady and
RunPodSandbox fails with FAILED_PRECONDITION leaving nothing; a file added
later is used without a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CRI_NAMESPACE, CriClient, connected, cri_config, running_cri_daemon

pytestmark = pytest.mark.root


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cri-net.d"
    path.mkdir()
    return path


@pytest.fixture
def daemon(tmp_path: Path, conf_dir: Path) -> Iterator[Any]:
    config = cri_config(f'cni_conf_dir = "{conf_dir}"\n')
    with running_cri_daemon(tmp_path / "daemon", config) as daemon:
        yield daemon


@pytest.fixture
def client(daemon: Any, tmp_path: Path) -> Iterator[CriClient]:
    with connected(daemon, tmp_path / "logs") as cri:
        yield cri


def _network_ready(cri: CriClient) -> Any:
    status = cri.runtime.Status(cri.pb.StatusRequest()).status
    return {c.type: c for c in status.conditions}["NetworkReady"]


def _pod_network(daemon: Any, conf_dir: Path, name: str) -> dict[str, Any]:
    """``network.cni``'s own default network, under another name (the same bridge)."""
    conflist = json.loads((daemon.root / "net.d" / "10-moorage.conflist").read_text())
    conflist["name"] = name
    return dict(conflist)


def _attached_network(daemon: Any, sandbox_id: str) -> str:
    record = daemon.root / "network.cni" / "attachments" / CRI_NAMESPACE / f"{sandbox_id}.json"
    return str(json.loads(record.read_text())["network"])


def test_no_usable_config_is_network_not_ready_and_a_pod_fails_leaving_nothing(
        client: CriClient, daemon: Any, conf_dir: Path) -> None:
    (conf_dir / "05-broken.conflist").write_text("{not json")
    (conf_dir / "06-no-plugins.conf").write_text('{"cniVersion": "1.0.0", "name": "x"}')
    (conf_dir / "README").write_text(json.dumps(_pod_network(daemon, conf_dir, "ignored")))
    ready = _network_ready(client)
    assert ready.status is False
    assert ready.reason == "NetworkPluginNotReady"
    assert str(conf_dir) in ready.message
    config = client.pod_config("netless")
    with pytest.raises(grpc.RpcError) as failed:
        client.run_pod(config)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(conf_dir) in failed.value.details()
    assert not client.runtime.ListPodSandbox(client.pb.ListPodSandboxRequest()).items
    assert not list((daemon.state / "network.cni" / "netns").iterdir())


def test_a_config_added_later_is_used_without_a_restart(
        client: CriClient, daemon: Any, conf_dir: Path) -> None:
    assert _network_ready(client).status is False
    config = client.pod_config("late")
    with pytest.raises(grpc.RpcError):
        client.run_pod(config)
    name = f"{daemon.network.name}-cri"
    (conf_dir / "10-pods.conflist").write_text(json.dumps(_pod_network(daemon, conf_dir, name)))
    assert _network_ready(client).status is True
    sandbox_id, _ = client.run_pod(config)  # the same metadata: the failed run kept no name
    assert _attached_network(daemon, sandbox_id) == name
    status = client.runtime.PodSandboxStatus(
        client.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
    assert status.network.ip


def test_the_first_usable_file_in_name_order_is_the_pod_network(
        client: CriClient, daemon: Any, conf_dir: Path) -> None:
    base = daemon.network.name
    (conf_dir / "20-second.conflist").write_text(
        json.dumps(_pod_network(daemon, conf_dir, f"{base}-second")))
    (conf_dir / "10-first.conflist").write_text(
        json.dumps(_pod_network(daemon, conf_dir, f"{base}-first")))
    (conf_dir / "00-broken.conflist").write_text('{"cniVersion": "1.0.0", "name": "b"')
    sandbox_id, _ = client.run_pod()
    assert _attached_network(daemon, sandbox_id) == f"{base}-first"
    # The single-plugin form counts too, and sorts first here.
    single = _pod_network(daemon, conf_dir, f"{base}-single")
    bridge = single.pop("plugins")[0]
    (conf_dir / "01-single.conf").write_text(json.dumps({**single, **bridge}))
    sandbox_id, _ = client.run_pod()
    assert _attached_network(daemon, sandbox_id) == f"{base}-single"


def test_a_cni_add_that_fails_halfway_is_deleted_leaving_no_ip_veth_or_rule(
        client: CriClient, daemon: Any, conf_dir: Path) -> None:
    """The last plugin of the chain fails its ADD after bridge (veth, address), portmap (the
    host port's rules) and firewall made theirs: RunPodSandbox fails with the plugin's
    message, CNI DEL undoes every plugin, and the same pod runs once the chain is fixed."""
    import socket

    from tests.fixtures.network import iptables_leftovers

    name = f"{daemon.network.name}-half"
    conflist = _pod_network(daemon, conf_dir, name)
    good = json.loads(json.dumps(conflist))
    conflist["plugins"].append({"type": "tuning", "sysctl": {"net.core.no_such_sysctl": "1"}})
    (conf_dir / "10-pods.conflist").write_text(json.dumps(conflist))
    subnet = daemon.network.subnet

    def held() -> dict[str, set[str]]:
        bridge_ports = Path("/sys/class/net", daemon.network.bridge, "brif")
        return {
            "rules": set(iptables_leftovers(name, subnet, check=True))
            | set(iptables_leftovers(daemon.network.name, subnet, check=True)),
            "veths": {p.name for p in bridge_ports.iterdir()} if bridge_ports.is_dir() else set(),
            "ips": {p.name for p in (daemon.root / "network.cni" / "ipam").rglob("*")
                    if p.is_file() and p.name[0].isdigit()},
            "netns": {p.name for p in (daemon.state / "network.cni" / "netns").iterdir()},
            "pod dirs": {p.name for p in (daemon.state / "cri.v1" / "sandboxes").glob("*")},
        }

    before = held()
    config = client.pod_config("half")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    config.port_mappings.add(protocol=client.pb.TCP, container_port=80, host_port=host_port)
    with pytest.raises(grpc.RpcError) as failed:
        client.run_pod(config)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no_such_sysctl" in (failed.value.details() or ""), failed.value.details()
    assert held() == before
    assert not client.runtime.ListPodSandbox(client.pb.ListPodSandboxRequest()).items
    (conf_dir / "10-pods.conflist").write_text(json.dumps(good))
    sandbox_id, _ = client.run_pod(config)  # the name was released
    assert client.runtime.PodSandboxStatus(client.pb.PodSandboxStatusRequest(
        pod_sandbox_id=sandbox_id)).status.network.ip
