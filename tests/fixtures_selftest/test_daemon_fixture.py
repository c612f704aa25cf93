"""The ``Daemon`` fixture itself: the log on failure, config merging, cgroups, own networks."""

from __future__ import annotations

import ipaddress
import subprocess
import tomllib
from pathlib import Path

import pytest

from runtime.plugins.network.cni import conflist
from tests.fixtures.daemon import CGROUP_ROOT, Daemon, DaemonError, cgroup_dirs
from tests.fixtures.network import (
    TEST_RANGE,
    NetworkLease,
    iptables_leftovers,
    lease_network,
    remove_network,
)
from tests.fixtures.system import require_binary, require_root


def test_daemon_config_merges_an_api_table(tmp_path: Path) -> None:
    d = Daemon(tmp_path, 'required_plugins = ["server.http"]\n[api]\nshutdown_timeout = 3.0\n')
    try:
        config = tomllib.loads(d.config_path.read_text())
    finally:
        d.close()
    assert config["api"] == {"address": str(d.socket_path), "shutdown_timeout": 3.0}
    assert config["required_plugins"] == ["server.http"]
    assert (config["root"], config["state"]) == (str(d.root), str(d.state))
    assert len(str(d.socket_path)) < 100


def test_daemon_start_failure_shows_the_log(tmp_path: Path) -> None:
    d = Daemon(tmp_path, "bogus = 1\n")
    with pytest.raises(DaemonError) as info, d:
        pytest.fail("must not start")
    assert "daemon exited with 1 before serving" in str(info.value)
    assert "[top level] unknown key 'bogus'" in str(info.value)
    assert not d.state.exists()


def test_each_daemon_puts_containers_under_its_own_cgroup_parent(tmp_path: Path) -> None:
    """Two test runs on one host never share a container's cgroup, whatever its id."""
    first, second = Daemon(tmp_path / "a"), Daemon(tmp_path / "b")
    try:
        parents = [tomllib.loads(d.config_path.read_text())["cgroup_parent"]
                   for d in (first, second)]
    finally:
        first.close()
        second.close()
    assert parents == [first.cgroup_parent, second.cgroup_parent]
    assert parents[0] != parents[1]
    assert parents[0] == f"/moorage-test-{first.state.name}"


def test_daemon_keeps_a_cgroup_parent_the_test_sets(tmp_path: Path) -> None:
    d = Daemon(tmp_path, 'cgroup_parent = "/elsewhere"\n')
    try:
        config = tomllib.loads(d.config_path.read_text())
    finally:
        d.close()
    assert (config["cgroup_parent"], d.cgroup_parent) == ("/elsewhere", "/elsewhere")


def test_close_removes_the_daemon_s_empty_cgroups(tmp_path: Path) -> None:
    """Left by a task that was never deleted, or by the name=systemd hierarchy."""
    require_root()
    d = Daemon(tmp_path)
    hierarchies = [h for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink()]
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        hierarchies = [CGROUP_ROOT]
    for hierarchy in hierarchies[:2]:
        (hierarchy / d.cgroup_parent.strip("/") / "default" / "c1").mkdir(parents=True)
    assert cgroup_dirs(d.cgroup_parent)
    d.close()
    assert cgroup_dirs(d.cgroup_parent) == []


# -- the default network ------------------------------------------------------------------


def lease_of(d: Daemon) -> NetworkLease:
    assert d.network is not None
    return d.network


def network_cni(d: Daemon) -> dict[str, object]:
    section: dict[str, object] = tomllib.loads(d.config_path.read_text())["plugins"]["network.cni"]
    return section


def test_each_daemon_gets_its_own_default_network(tmp_path: Path) -> None:
    """Own name, bridge and /24: no shared addresses, bridge or iptables chains between runs."""
    first, second = Daemon(tmp_path / "a"), Daemon(tmp_path / "b")
    try:
        leases = [lease_of(d) for d in (first, second)]
        sections = [network_cni(d) for d in (first, second)]
    finally:
        first.close()
        second.close()
    assert sections == [{"default_network": lease.name, "bridge": lease.bridge,
                         "subnet": lease.subnet} for lease in leases]
    names, bridges, subnets = zip(*((x.name, x.bridge, x.subnet) for x in leases), strict=True)
    assert len(set(names)) == len(set(bridges)) == len(set(subnets)) == 2
    for lease, d in zip(leases, (first, second), strict=True):
        assert ipaddress.IPv4Network(lease.subnet).subnet_of(TEST_RANGE)
        assert ipaddress.IPv4Network(lease.subnet).prefixlen == 24
        assert lease.bridge == f"{d.state.name}-{lease.slot}"
        assert len(lease.bridge.encode()) <= 15  # IFNAMSIZ - 1
        assert lease.name == f"moorage-test-{lease.bridge}"
        assert not lease.held  # given back by close


def test_daemon_merges_its_network_into_a_network_cni_table(tmp_path: Path) -> None:
    d = Daemon(tmp_path, '[plugins."network.cni"]\nfirewall = false\n')
    try:
        section = network_cni(d)
    finally:
        d.close()
    assert d.network is not None
    assert section == {"firewall": False, "default_network": d.network.name,
                       "bridge": d.network.bridge, "subnet": d.network.subnet}


def test_daemon_keeps_a_network_the_test_sets(tmp_path: Path) -> None:
    """A test that sets the default network owns it: no lease, nothing removed at close."""
    d = Daemon(tmp_path, '[plugins."network.cni"]\nsubnet = "10.99.0.0/24"\n')
    try:
        section = network_cni(d)
    finally:
        d.close()
    assert (d.network, section) == (None, {"subnet": "10.99.0.0/24"})


def test_a_new_daemon_on_the_same_root_gets_its_own_default_conflist(tmp_path: Path) -> None:
    """network.cni writes a missing file only: the earlier daemon's would name its network."""
    earlier = tmp_path / "root" / "net.d" / conflist.DEFAULT_FILE
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"cniVersion": "1.0.0", "name": "moorage-test-gone-1", "plugins": []}')
    d = Daemon(tmp_path)
    d.close()
    assert not earlier.exists()
    # A file the test wrote itself stays.
    earlier.write_text('{"cniVersion": "1.0.0", "name": "moorage", "plugins": []}')
    Daemon(tmp_path).close()
    assert earlier.exists()


def test_a_leased_slot_is_not_leased_again(tmp_path: Path) -> None:
    """The flock holds across processes and within one."""
    first = lease_network("motoken")
    try:
        second = lease_network("motoken")  # starts at the same slot
        second.release()
    finally:
        first.release()
    assert first.slot != second.slot


def test_a_slot_on_a_host_route_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge a crashed run left (or another tool's network) keeps its subnet."""
    probe = lease_network("motoken")
    probe.release()
    taken = ipaddress.IPv4Network(probe.subnet)
    monkeypatch.setattr(conflist, "_host_routes", lambda: [("leftover0", taken)])
    lease = lease_network("motoken")
    lease.release()
    assert lease.slot != probe.slot


def test_remove_network_deletes_bridge_rules_and_per_container_chains() -> None:
    """What the CNI plugins leave after a crash goes; the shared chains and others' rules stay."""
    require_root()
    require_binary("ip")
    require_binary("iptables")
    lease = lease_network("moselftest")
    other = lease_network("moselftest")
    net = ipaddress.ip_network(lease.subnet)
    ip, foreign = f"{net[2]}/32", f"{ipaddress.ip_network(other.subnet)[2]}/32"
    chain = "CNI-0123456789abcdef01234567"
    comment = f'name: "{lease.name}" id: "default--web"'

    def iptables(*args: str) -> None:
        subprocess.run(["iptables", *args], check=True, capture_output=True)

    try:
        subprocess.run(["ip", "link", "add", lease.bridge, "type", "bridge"], check=True)
        iptables("-t", "nat", "-N", chain)
        iptables("-t", "nat", "-A", chain, "-d", str(net), "-m", "comment", "--comment",
                 comment, "-j", "ACCEPT")
        iptables("-t", "nat", "-A", "POSTROUTING", "-s", ip, "-m", "comment", "--comment",
                 comment, "-j", chain)
        iptables("-t", "filter", "-A", "FORWARD", "-s", ip, "-j", "ACCEPT")  # firewall's
        iptables("-t", "filter", "-A", "FORWARD", "-s", foreign, "-j", "ACCEPT")
        assert len(iptables_leftovers(lease.name, lease.subnet)) == 4
        assert remove_network(lease.name, lease.bridge, lease.subnet) == []
        assert not Path("/sys/class/net", lease.bridge).exists()
        filter_rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                                      text=True, check=True).stdout
        assert f"-A FORWARD -s {foreign} -j ACCEPT" in filter_rules
        assert f"-s {ip}" not in filter_rules
    finally:
        subprocess.run(["iptables", "-D", "FORWARD", "-s", foreign, "-j", "ACCEPT"],
                       capture_output=True, check=False)
        remove_network(lease.name, lease.bridge, lease.subnet)
        lease.release()
        other.release()
