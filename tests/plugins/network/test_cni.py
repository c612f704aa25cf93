"""``network.cni``: containers on a bridge, published ports, ``--net none|host|NAME``, crashes.

The first classes check the pieces that need no root (port syntax, conflists,
generated ``/etc`` files, the CNI stdin). The others drive a real daemon with
``moorage run`` on a busybox directory, as the runtime's CLI tests do; all
traffic stays on 127.0.0.1 and the bridge's private subnet. Each daemon has a
default network of its own (see :mod:`tests.fixtures.network`), which is what
its tests check addresses, IPAM files and iptables rules against.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime.core.config import ConfigError, decode_plugin_config, parse_config
from runtime.core.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.plugins.network import api as network_task
from runtime.plugins.network import etc_files
from runtime.plugins.network.api import (
    NETWORK_ANNOTATION,
    PORTS_ANNOTATION,
    Attachment,
    IPConfig,
    PortMapping,
    decode_ports,
    encode_ports,
    parse_publish,
)
from runtime.plugins.network.cni import conflist, netns
from runtime.plugins.network.cni.conflist import ConfList, check_subnet, default_conflist
from runtime.plugins.network.cni.plugin import CniConfig
from runtime.plugins.network.cni.records import AttachmentRecord
from runtime.plugins.network.cni.service import CniNetwork, _plugin_config
from tests.fixtures.network import (
    NetworkLease,
    daemon_token,
    iptables_leftovers,
    lease_network,
    remove_network,
)
from tests.fixtures.system import require_binary, require_root, unavailable
from tests.plugins.runtime.helpers import RuntimeDaemon, moorage, wait_until

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

SERVE = "while true; do nc -l -p 80 -e echo {word}; done"


# -- pieces ---------------------------------------------------------------------------


class TestPublishSyntax:
    @pytest.mark.parametrize(("text", "expected"), [
        ("8080:80", PortMapping(host_port=8080, container_port=80)),
        ("127.0.0.1:8080:80", PortMapping(host_port=8080, container_port=80,
                                          host_ip="127.0.0.1")),
        ("5353:53/udp", PortMapping(host_port=5353, container_port=53, protocol="udp")),
        ("[::1]:8080:80/tcp", PortMapping(host_port=8080, container_port=80, host_ip="::1")),
        # No host port: one the daemon picks at task create (0 until then).
        ("80", PortMapping(host_port=0, container_port=80)),
        ("53/udp", PortMapping(host_port=0, container_port=53, protocol="udp")),
        ("127.0.0.1::80", PortMapping(host_port=0, container_port=80, host_ip="127.0.0.1")),
        ("[::1]::80", PortMapping(host_port=0, container_port=80, host_ip="::1")),
        ("0:80", PortMapping(host_port=0, container_port=80)),
    ])
    def test_accepted_forms(self, text: str, expected: PortMapping) -> None:
        assert parse_publish(text) == expected

    @pytest.mark.parametrize(("text", "message"), [
        ("80:", "expected [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]"),
        ("a:80", "expected [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]"),
        ("1.2.3.4::", "expected [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]"),
        ("70000:80", "Expected `int` <= 65535"),
        ("8080:80/sctp", "port protocol 'sctp': use tcp or udp"),
        ("300.1.1.1:8080:80", "host address '300.1.1.1' is not an IP"),
    ])
    def test_refused_forms(self, text: str, message: str) -> None:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            parse_publish(text)

    def test_cli_mirrors_the_annotation_names(self) -> None:
        """``moorage run`` keeps its own copies (it avoids importing msgspec): they agree."""
        from runtime.cli import run_flags as run_cli

        assert (run_cli.NETWORK_ANNOTATION, run_cli.PORTS_ANNOTATION) == (
            NETWORK_ANNOTATION, PORTS_ANNOTATION)

    def test_host_port_zero_is_assigned_a_free_distinct_port(self) -> None:
        from runtime.plugins.network.api import assign_host_ports

        given = [parse_publish("80"), parse_publish("81"), parse_publish("8080:82"),
                 parse_publish("127.0.0.1::53/udp")]
        assigned = assign_host_ports(given)
        assert [p.container_port for p in assigned] == [80, 81, 82, 53]
        assert assigned[2].host_port == 8080
        picked = [assigned[0].host_port, assigned[1].host_port]
        assert all(p > 0 for p in picked) and picked[0] != picked[1]
        assert assigned[3].host_port > 0 and assigned[3].host_ip == "127.0.0.1"

    def test_annotation_round_trip(self) -> None:
        ports = [parse_publish("127.0.0.1:8080:80"), parse_publish("53:53/udp")]
        assert decode_ports(encode_ports(ports)) == ports
        assert decode_ports("") == []


class TestConflists:
    def test_single_plugin_conf_is_a_list_of_one(self) -> None:
        conf = ConfList.from_json({"cniVersion": "0.4.0", "name": "n", "type": "bridge",
                                   "bridge": "b0"}, "x.conf")
        assert conf.plugins == ({"type": "bridge", "bridge": "b0"},)

    @pytest.mark.parametrize(("data", "message"), [
        ([], "x: not a JSON object"),
        ({"cniVersion": "1.0.0", "plugins": []}, 'x: missing "name"'),
        ({"cniVersion": "1.0.0", "name": "n"}, 'x: neither "plugins" nor "type"'),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{}]},
         'x: "plugins" must list objects with a "type"'),
        ({"cniVersion": "0.2.0", "name": "n", "type": "bridge"},
         "x: cniVersion 0.2.0 is not supported (0.3.0 or later)"),
    ])
    def test_broken_configurations_are_named(self, data: Any, message: str) -> None:
        with pytest.raises(InvalidArgument) as exc:
            ConfList.from_json(data, "x")
        assert exc.value.message == message

    def test_find_by_name_first_file_wins(self, tmp_path: Path) -> None:
        (tmp_path / "10-a.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}))
        (tmp_path / "20-a.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "ptp"}]}))
        (tmp_path / "30-broken.conflist").write_text("{")
        assert conflist.find_conflist(tmp_path, "a").plugins == ({"type": "bridge"},)
        with pytest.raises(NotFound, match=r"network 'b' not found in .* \(networks: a\)"):
            conflist.find_conflist(tmp_path, "b")

    def test_first_usable_file_in_name_order_passing_broken_ones(self, tmp_path: Path) -> None:
        assert conflist.first_conflist(tmp_path / "missing") is None
        (tmp_path / "00-broken.conflist").write_text("{")
        (tmp_path / "01-no-plugins.conf").write_text('{"cniVersion": "1.0.0", "name": "x"}')
        (tmp_path / "02-old.conf").write_text(
            '{"cniVersion": "0.2.0", "name": "old", "type": "bridge"}')
        (tmp_path / "05-README.md").write_text('{"cniVersion": "1.0.0", "name": "md"}')
        assert conflist.first_conflist(tmp_path) is None
        (tmp_path / "20-b.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "ptp"}]}))
        (tmp_path / "10-a.conf").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "a", "type": "bridge"}))
        first = conflist.first_conflist(tmp_path)
        assert first is not None and (first.name, first.source) == (
            "a", str(tmp_path / "10-a.conf"))

    def test_default_network(self, tmp_path: Path) -> None:
        data = default_conflist(name="moorage", bridge="moorage0", subnet="10.88.0.0/16",
                                ipam_dir=tmp_path, firewall=False)
        conf = ConfList.from_json(data)
        assert [p["type"] for p in conf.plugins] == ["bridge", "portmap"]
        ipam = conf.plugins[0]["ipam"]
        assert ipam["ranges"] == [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]]
        assert ipam["dataDir"] == str(tmp_path)

    def test_subnet_must_be_private_and_clear_of_host_routes(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ipaddress

        routes = [("eth0", ipaddress.IPv4Network("10.88.0.0/24")),
                  ("moorage0", ipaddress.IPv4Network("10.89.0.0/16")),
                  ("eth0", ipaddress.IPv4Network("0.0.0.0/0"))]
        monkeypatch.setattr(conflist, "_host_routes", lambda: routes)
        overlap = re.escape("overlaps the host route 10.88.0.0/24 on eth0")
        with pytest.raises(InvalidArgument, match=overlap):
            check_subnet("10.88.0.0/16", "moorage0")
        # Our own bridge's route (an earlier run) and the default route are fine.
        assert check_subnet("10.89.0.0/16", "moorage0") == "10.89.0.0/16"
        with pytest.raises(InvalidArgument, match=re.escape("8.8.0.0/16 is not a private range")):
            check_subnet("8.8.0.0/16", "moorage0")


SOURCE = "/etc/moorage/plugins.toml"


def cni_config(table: str) -> CniConfig:
    return decode_plugin_config(parse_config(f'[plugins."network.cni"]\n{table}', SOURCE),
                                "network.cni", CniConfig)


class TestConfig:
    def test_default_network_name_bridge_and_subnet_are_configurable(self) -> None:
        """An operator whose LAN is on 10.88.0.0/16, or who runs a second daemon."""
        config = cni_config('default_network = "lab"\nbridge = "lab0"\n'
                            'subnet = "192.168.77.0/24"\n')
        assert (config.default_network, config.bridge, config.subnet) == (
            "lab", "lab0", "192.168.77.0/24")
        assert cni_config("") == CniConfig()
        assert (CniConfig().default_network, CniConfig().bridge, CniConfig().subnet) == (
            "moorage", "moorage0", "10.88.0.0/16")

    @pytest.mark.parametrize(("subnet", "message"), [
        ("10.88.0.1/16", "subnet '10.88.0.1/16': 10.88.0.1/16 has host bits set"),
        ("10.88.0.0/33", "subnet '10.88.0.0/33': '10.88.0.0/33' does not appear to be an "
                         "IPv4 or IPv6 network"),
        ("lan", "subnet 'lan': 'lan' does not appear to be an IPv4 or IPv6 network"),
        ("8.8.0.0/16", "subnet 8.8.0.0/16 is not a private range"),
        ("10.88.0.0/31", "subnet 10.88.0.0/31 is too small for a gateway and a container"),
    ])
    def test_subnet_is_checked_with_the_file(self, subnet: str, message: str) -> None:
        """``moorage config check`` finds it; the host's routes are checked at start."""
        with pytest.raises(ConfigError) as exc:
            cni_config(f"subnet = {json.dumps(subnet)}\n")
        assert str(exc.value) == f'{SOURCE}: [plugins."network.cni"]: {message}'

    @pytest.mark.parametrize(("key", "value"), [
        ("bridge", "moorage-bridge-0"),  # 16 bytes: Linux allows 15
        ("bridge", "br 0"),
        ("default_network", "-net"),
        ("default_network", "a/b"),
    ])
    def test_bridge_and_network_names_are_checked_with_the_file(self, key: str,
                                                                value: str) -> None:
        with pytest.raises(ConfigError) as exc:
            cni_config(f"{key} = {json.dumps(value)}\n")
        assert str(exc.value).startswith(
            f'{SOURCE}: [plugins."network.cni"] key \'{key}\': expected `str` matching regex')


class TestPluginStdin:
    def test_prev_result_and_declared_capabilities_only(self) -> None:
        conf = ConfList(name="n", cni_version="1.0.0", plugins=(
            {"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": True}}))
        ports = [parse_publish("127.0.0.1:8080:80")]
        first = _plugin_config(conf, conf.plugins[0], None, ports)
        assert first == {"type": "bridge", "cniVersion": "1.0.0", "name": "n"}
        second = _plugin_config(conf, conf.plugins[1], {"ips": []}, ports)
        assert second["prevResult"] == {"ips": []}
        assert second["runtimeConfig"] == {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]}


class TestContractModule:
    def test_api_reexports_the_task_side_and_etc_files(self) -> None:
        from runtime.plugins.network import task

        assert network_task.setup_task_network is task.setup_task_network
        assert network_task.teardown_task_network is task.teardown_task_network
        assert network_task.etc_hosts is etc_files.etc_hosts
        assert network_task.resolv_conf is etc_files.resolv_conf

    @pytest.mark.parametrize("module", ["task", "etc_files", "api"])
    def test_each_module_imports_first_without_a_cycle_error(self, module: str) -> None:
        code = f"import runtime.plugins.network.{module}"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


class TestEtcFiles:
    def test_resolv_conf_drops_loopback_servers(self, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        host = tmp_path / "resolv.conf"
        host.write_text("search example\nnameserver 127.0.0.53\nnameserver ::1\n"
                        "nameserver 10.0.0.2\noptions edns0\n")
        monkeypatch.setattr(etc_files, "HOST_RESOLV", host)
        monkeypatch.setattr(etc_files, "RESOLVED_UPSTREAM", tmp_path / "absent")
        assert etc_files.resolv_conf() == "search example\nnameserver 10.0.0.2\noptions edns0\n"
        assert etc_files.resolv_conf(host=True) == host.read_text()

    def test_resolved_upstream_replaces_a_stub_only_file(self, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\n")
        (tmp_path / "upstream").write_text("nameserver 10.1.2.3\n")
        monkeypatch.setattr(etc_files, "HOST_RESOLV", tmp_path / "resolv.conf")
        monkeypatch.setattr(etc_files, "RESOLVED_UPSTREAM", tmp_path / "upstream")
        assert etc_files.resolv_conf() == "nameserver 10.1.2.3\n"

    def test_hosts_names_the_container(self) -> None:
        attachment = Attachment(namespace="default", container_id="c1", network="moorage",
                                netns="/x", ips=[IPConfig(address="10.88.0.5/16")])
        hosts = etc_files.etc_hosts("c1", attachment)
        assert hosts.startswith("127.0.0.1\tlocalhost\n")
        assert hosts.endswith("10.88.0.5\tc1\n")
        assert "c1" not in etc_files.etc_hosts("c1", None)

    async def test_spec_without_annotation_is_untouched(self, tmp_path: Path) -> None:
        spec: dict[str, Any] = {"linux": {"namespaces": [{"type": "network"}]}}
        assert await network_task.setup_task_network(None, "default", "c1", spec,
                                                     tmp_path) is spec
        assert not tmp_path.joinpath("hosts").exists()

    async def test_without_network_plugin_ports_are_refused(self, tmp_path: Path) -> None:
        spec = {"annotations": {NETWORK_ANNOTATION: "bridge",
                                PORTS_ANNOTATION: encode_ports([parse_publish("8080:80")])}}
        with pytest.raises(FailedPrecondition, match="no network plugin is running"):
            await network_task.setup_task_network(None, "default", "c1", spec, tmp_path)

    async def test_host_mode_leaves_the_network_namespace(self, tmp_path: Path) -> None:
        spec = {"hostname": "boat", "annotations": {NETWORK_ANNOTATION: "host"},
                "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}, "mounts": []}
        final = await network_task.setup_task_network(None, "default", "c1", spec, tmp_path)
        assert final["linux"]["namespaces"] == [{"type": "pid"}]
        assert [m["destination"] for m in final["mounts"]] == [
            "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
        assert all("ro" in m["options"] for m in final["mounts"])
        assert (tmp_path / "hostname").read_text() == "boat\n"
        assert spec["linux"]["namespaces"][1] == {"type": "network"}  # the input is kept


class RefusingNetwork:
    """A network service that fails the test if anything is attached."""

    async def attach(self, *args: Any) -> Attachment:
        raise AssertionError(f"attach{args} called")

    async def detach(self, namespace: str, container_id: str) -> None:
        pass


class TestNoneMode:
    async def test_the_runtime_makes_the_namespace(self, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
        """none: a namespace entry without a path (the OCI runtime's own), no attachment."""
        joined = {"type": "network", "path": "/proc/1/ns/net"}
        spec = {"hostname": "boat", "annotations": {NETWORK_ANNOTATION: "none"},
                "linux": {"namespaces": [{"type": "pid"}, joined]},
                "mounts": [{"destination": "/data", "type": "bind", "source": "/srv"}]}
        for network in (RefusingNetwork(), None):
            final = await network_task.setup_task_network(network, "default", "c1", spec,
                                                          tmp_path)
            assert final["linux"]["namespaces"] == [{"type": "pid"}, {"type": "network"}]
            assert [m["destination"] for m in final["mounts"]] == [
                "/data", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
            assert (tmp_path / "hostname").read_text() == "boat\n"
            assert (tmp_path / "hosts").read_text() == network_task.etc_hosts("boat", None)
        # Without a network plugin, none is complete: nothing to warn about.
        assert "no network plugin" not in caplog.text
        # The input is kept.
        assert spec["linux"]["namespaces"] == [{"type": "pid"}, joined]
        assert len(spec["mounts"]) == 1

    async def test_ports_are_refused(self, tmp_path: Path) -> None:
        spec = {"annotations": {NETWORK_ANNOTATION: "none",
                                PORTS_ANNOTATION: encode_ports([parse_publish("8080:80")])}}
        for network in (RefusingNetwork(), None):
            with pytest.raises(InvalidArgument,
                               match="ports cannot be published without a network"):
                await network_task.setup_task_network(network, "default", "c1", spec, tmp_path)


def cni_network(tmp_path: Path) -> CniNetwork:
    return CniNetwork(conf_dir=tmp_path / "net.d", bin_dirs=[], default_network="moorage",
                      records_dir=tmp_path / "attachments", netns_dir=tmp_path / "netns")


def _earlier_record(tmp_path: Path, namespace: str, container_id: str,
                    **fields: Any) -> Path:
    """An attachment record on disk as an earlier daemon left it (network ``none``)."""
    cni_id = f"{namespace}--{container_id}"
    record = AttachmentRecord(namespace=namespace, container_id=container_id, network="none",
                              cni_id=cni_id, netns=str(tmp_path / "netns" / cni_id), **fields)
    path = tmp_path / "attachments" / namespace / f"{container_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(record))
    return path


class TestDetach:
    async def test_a_container_never_attached_costs_no_disk_access(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """After the startup scan, detach of a host or none task reads no record."""
        service = cni_network(tmp_path)
        assert await service.live_keys() == set()

        def no_read(*args: Any) -> None:
            raise AssertionError("record read")

        monkeypatch.setattr(service, "_read", no_read)
        await service.detach("default", "c1")

    async def test_records_of_an_earlier_daemon_are_still_detached(self,
                                                                   tmp_path: Path) -> None:
        """A record found by the startup scan is undone by detach, not skipped."""
        require_root()  # unpinning: umount(2) of the (absent) namespace file
        path = _earlier_record(tmp_path, "default", "old")
        service = cni_network(tmp_path)
        assert await service.live_keys() == set()  # the scan
        await service.detach("default", "old")
        assert not path.exists()


class TestStartup:
    async def test_release_at_startup_detaches_unused_records_and_unrecorded_namespaces(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """What the init runs: stale records undone, namespaces without a record removed."""
        require_root()  # unpinning: umount(2) of the (absent) namespace file
        path = _earlier_record(tmp_path, "default", "old")
        # Left by a crash between a record's removal and its namespace's: no record.
        orphan = tmp_path / "netns" / "default--gone"
        orphan.parent.mkdir()
        orphan.touch()
        service = cni_network(tmp_path)
        assert await service.release_at_startup() == [("default", "old")]
        assert not path.exists()
        assert not orphan.exists()
        assert await service.attachments() == []

        def no_read(*args: Any) -> None:
            raise AssertionError("record read")

        # The scan counts as the startup scan: detach of a never-attached task reads nothing.
        monkeypatch.setattr(service, "_read", no_read)
        await service.detach("default", "c1")

    async def test_release_at_startup_keeps_a_held_attachment_once_added(
            self, tmp_path: Path) -> None:
        """A held attachment (a pod without infra) is its caller's to detach, even with no
        process in its namespace; one still ``adding`` was a crash's and is released."""
        require_root()  # unpinning: umount(2) of the (absent) namespace file
        _earlier_record(tmp_path, "k8s.io", "pod", held=True, state="added")
        _earlier_record(tmp_path, "k8s.io", "half", held=True, state="adding")
        service = cni_network(tmp_path)
        assert await service.release_at_startup() == [("k8s.io", "half")]
        assert [(a.namespace, a.container_id) for a in await service.attachments()] == [
            ("k8s.io", "pod")]
        assert await service.cleanup_stale(set()) == []
        await service.detach("k8s.io", "pod")  # its caller's detach still releases it
        assert await service.attachments() == []

    async def test_release_at_startup_on_an_empty_root_finds_nothing(self,
                                                                     tmp_path: Path) -> None:
        service = cni_network(tmp_path)
        assert await service.release_at_startup() == []
        assert await service.attachments() == []


def test_created_namespace_has_loopback_up(tmp_path: Path) -> None:
    """netns.create brings lo up in-process: no loopback plugin runs."""
    require_root()
    require_binary("nsenter")
    require_binary("ip")
    pinned = tmp_path / "ns"
    netns.create(pinned)
    try:
        links = subprocess.run(["nsenter", f"--net={pinned}", "ip", "-o", "link", "show"],
                               capture_output=True, text=True, check=True).stdout
        addresses = subprocess.run(["nsenter", f"--net={pinned}", "ip", "-o", "addr", "show"],
                                   capture_output=True, text=True, check=True).stdout
    finally:
        netns.remove(pinned)
    [lo] = links.splitlines()
    assert re.match(r"1: lo: <[A-Z_,]*\bUP\b", lo), lo
    assert "inet 127.0.0.1/8" in addresses
    assert not pinned.exists()


# -- a real daemon --------------------------------------------------------------------------


def require_network_host() -> None:
    require_binary("iptables")
    require_binary("ip")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not Path("/usr/lib/cni", plugin).is_file():
            unavailable(f"CNI plugin {plugin} missing "
                        "(apt-get install containernetworking-plugins)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(rd: RuntimeDaemon, rootfs: Path, *args: str,
        flags: tuple[str, ...] = ("--rm",)) -> subprocess.CompletedProcess[str]:
    return moorage(rd.address, "run", *flags, "--rootfs", str(rootfs), "busybox", *args)


def attachment(rd: RuntimeDaemon, container_id: str) -> dict[str, Any]:
    found: dict[str, Any] = rd.client().call(
        "GET", f"/v1/networks/attachments/{container_id}", dict)
    return found


def ip_of(found: dict[str, Any]) -> str:
    return str(found["ips"][0]["address"]).partition("/")[0]


def veths(found: dict[str, Any]) -> list[str]:
    """The host ends of the container's veth pair (not the bridge)."""
    return [i["name"] for i in found["interfaces"]
            if not i.get("sandbox") and i["name"].startswith("veth")]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def own_network(rd: RuntimeDaemon) -> NetworkLease:
    """The daemon's default network, leased by the fixture."""
    lease = rd.daemon.network
    assert lease is not None
    return lease


def in_subnet(ip: str, lease: NetworkLease) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(lease.subnet)


def ipam_file(rd: RuntimeDaemon, ip: str) -> Path:
    return rd.root / "network.cni" / "ipam" / own_network(rd).name / ip


def fetch(host: str, port: int, timeout: float = 20.0) -> bytes:
    """What a server sends right after connecting, retried until it listens."""
    def attempt() -> bytes | None:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                data = conn.recv(100)
                return data or None
        except OSError:
            return None

    data: bytes = wait_until(attempt, timeout, f"a server on {host}:{port}")
    return data


def interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


@pytest.fixture
def net(rd: RuntimeDaemon) -> RuntimeDaemon:
    """The runtime daemon, with the CNI plugins required and ``network.cni`` running."""
    require_network_host()
    status = {f"{p.type}.{p.id}": p for p in rd.client().plugins()}["network.cni"]
    assert status.status == "ok", status.reason
    return rd


@pytest.mark.root
class TestBridge:
    def test_published_port_reaches_the_container(self, net: RuntimeDaemon,
                                                  rootfs: Path) -> None:
        """-p 127.0.0.1:PORT:80 reaches the server; rm releases veth, address and rules."""
        port = free_port()
        started = run(net, rootfs, "sh", "-c", SERVE.format(word="hello"),
                      flags=("-d", "--name", "web", "-p", f"127.0.0.1:{port}:80"))
        assert started.returncode == 0, started.stderr
        found = attachment(net, "web")
        assert found["network"] == own_network(net).name
        assert found["ports"] == [{"host_port": port, "container_port": 80, "protocol": "tcp",
                                   "host_ip": "127.0.0.1"}]
        assert fetch("127.0.0.1", port) == b"hello\n"
        ip = ip_of(found)
        assert in_subnet(ip, own_network(net))
        assert ipam_file(net, ip).is_file()
        [veth] = veths(found)
        assert link_exists(veth)

        removed = moorage(net.address, "containers", "rm", "-f", "web")
        assert removed.returncode == 0, removed.stderr
        assert not link_exists(veth)
        assert not ipam_file(net, ip).exists()
        rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True,
                               text=True, check=True).stdout
        assert f"--dport {port}" not in rules
        assert net.client().call("GET", "/v1/networks/attachments", list) == []

    def test_containers_on_the_bridge_reach_each_other(self, net: RuntimeDaemon,
                                                       rootfs: Path) -> None:
        started = run(net, rootfs, "sh", "-c", SERVE.format(word="pong"),
                      flags=("-d", "--name", "server"))
        assert started.returncode == 0, started.stderr
        server_ip = ip_of(attachment(net, "server"))
        script = (f"for i in $(seq 100); do nc -w 2 {server_ip} 80 && break; sleep 0.1; done; "
                  "cat /etc/hosts /etc/hostname /etc/resolv.conf; ip -4 -o addr show eth0")
        result = run(net, rootfs, "sh", "-c", script, flags=("--rm", "--name", "client"))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "pong"
        assert "127.0.0.1\tlocalhost" in lines
        client_ip = re.search(r"inet ([\d.]+)/24", result.stdout)
        assert client_ip is not None, result.stdout
        assert in_subnet(client_ip.group(1), own_network(net))
        assert f"{client_ip.group(1)}\tclient" in lines
        assert "client" in lines  # /etc/hostname
        assert client_ip.group(1) != server_ip
        assert not [line for line in lines
                    if line.startswith("nameserver 127.") or line == "nameserver ::1"]

    def test_etc_files_are_read_only(self, net: RuntimeDaemon, rootfs: Path) -> None:
        result = run(net, rootfs, "sh", "-c", "echo x >> /etc/hosts || echo refused")
        assert (result.returncode, result.stdout.strip().splitlines()[-1]) == (0, "refused")

    def test_named_network(self, net: RuntimeDaemon, rootfs: Path) -> None:
        """--net NAME runs the conflist of that name from conf_dir."""
        # Leased like the default one: a concurrent run never has it too.
        side = lease_network(daemon_token(net.state))
        conf = default_conflist(name=side.name, bridge=side.bridge, subnet=side.subnet,
                                ipam_dir=net.root / "side-ipam", firewall=False)
        (net.root / "net.d" / "20-side.conflist").write_text(json.dumps(conf))
        try:
            result = run(net, rootfs, "ip", "-4", "-o", "addr", "show", "eth0",
                         flags=("--rm", "--net", side.name))
            assert result.returncode == 0, result.stderr
            first = ipaddress.ip_network(side.subnet)[2]  # after the gateway
            assert f"inet {first}/24" in result.stdout
            listed = {n["name"]: n for n in net.client().call("GET", "/v1/networks", list)}
            assert listed[side.name]["plugins"] == ["bridge", "portmap"]
            assert listed[own_network(net).name]["default"] is True
            missing = run(net, rootfs, "true", flags=("--rm", "--net", "nosuch"))
            assert missing.returncode == 125
            assert "network 'nosuch' not found" in missing.stderr
        finally:
            assert remove_network(side.name, side.bridge, side.subnet) == []
            side.release()


def namespace_pinned(inode: int) -> bool:
    """Whether a bind mount (ours, ``ip netns``...) holds the network namespace ``inode``."""
    return f"net:[{inode}]" in Path("/proc/self/mountinfo").read_text()


def nothing_attached(rd: RuntimeDaemon) -> list[str]:
    """What the network plugin holds: records and pinned namespaces (none expected)."""
    found = [str(p) for p in (rd.root / "network.cni" / "attachments").glob("*/*.json")]
    return found + [str(p) for p in (rd.state / "network.cni" / "netns").iterdir()]


@pytest.mark.root
class TestModes:
    def test_none_has_only_loopback(self, net: RuntimeDaemon, rootfs: Path) -> None:
        """lo up (TCP over 127.0.0.1 works), no other link, the /etc files as before."""
        script = ("cat /proc/net/dev; echo --; ip -o link; ip -o addr show lo; echo --; "
                  "nc -l -p 9000 -e echo over-lo & "
                  "for i in $(seq 100); do nc 127.0.0.1 9000 && break; sleep 0.05; done; "
                  "cat /etc/hosts /etc/hostname /etc/resolv.conf")
        result = run(net, rootfs, "sh", "-c", script,
                     flags=("--rm", "--net", "none", "--name", "alone"))
        assert result.returncode == 0, result.stderr
        dev, links, rest = result.stdout.split("--\n")
        assert interfaces(dev) == {"lo"}
        [lo, *addresses] = links.splitlines()
        assert re.match(r"1: lo: <[A-Z_,]*\bUP\b", lo), lo  # brought up by the OCI runtime
        assert "inet 127.0.0.1/8" in "".join(addresses)
        lines = rest.splitlines()
        assert lines[0] == "over-lo"
        assert "127.0.0.1\tlocalhost" in lines
        assert "alone" in lines  # /etc/hostname
        assert not [line for line in lines
                    if line.startswith("nameserver 127.") or line == "nameserver ::1"]
        # No attachment: nothing recorded, listed or pinned for it.
        assert net.client().call("GET", "/v1/networks/attachments", list) == []
        assert nothing_attached(net) == []

    def test_none_refuses_ports(self, net: RuntimeDaemon, rootfs: Path) -> None:
        result = run(net, rootfs, "true", flags=("--rm", "--net", "none", "-p", "8080:80"))
        assert result.returncode == 125
        assert "ports cannot be published without a network" in result.stderr

    def test_host_shares_the_host_namespace(self, net: RuntimeDaemon, rootfs: Path) -> None:
        result = run(net, rootfs, "cat", "/proc/net/dev", flags=("--rm", "--net", "host"))
        assert result.returncode == 0, result.stderr
        assert interfaces(result.stdout) == interfaces(Path("/proc/net/dev").read_text())
        assert net.client().call("GET", "/v1/networks/attachments", list) == []


@pytest.mark.root
class TestCrash:
    def test_attachments_of_dead_containers_are_released_after_restart(
            self, net: RuntimeDaemon, rootfs: Path) -> None:
        """SIGKILL the daemon, kill the container meanwhile: the restart frees veth and IP."""
        for name in ("dies", "lives"):
            started = run(net, rootfs, "sh", "-c", "sleep 1000", flags=("-d", "--name", name))
            assert started.returncode == 0, started.stderr
        dead, alive = attachment(net, "dies"), attachment(net, "lives")
        [dead_veth], [live_veth] = veths(dead), veths(alive)
        pid = net.client().task("dies").pid
        net.kill()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), what=f"pid {pid} to exit")
        assert link_exists(dead_veth)  # nobody cleaned it while the daemon was down
        net.restart()
        assert not link_exists(dead_veth)
        assert not ipam_file(net, ip_of(dead)).exists()
        assert not Path(dead["netns"]).exists()
        with pytest.raises(NotFound):
            attachment(net, "dies")
        # The one still running keeps everything.
        assert link_exists(live_veth)
        assert ipam_file(net, ip_of(alive)).is_file()
        assert attachment(net, "lives")["netns"] == alive["netns"]
        deadline = time.monotonic() + 30
        while net.client().task("dies").status != "stopped" and time.monotonic() < deadline:
            time.sleep(0.1)
        for name in ("dies", "lives"):
            assert moorage(net.address, "containers", "rm", "-f", name).returncode == 0
        assert not link_exists(live_veth)
        assert not ipam_file(net, ip_of(alive)).exists()

    def test_closing_the_test_daemon_removes_what_a_crash_left(self, net: RuntimeDaemon,
                                                               rootfs: Path) -> None:
        """The fixture's close: bridge, NAT and port rules of a daemon killed mid-run go."""
        lease = own_network(net)
        started = run(net, rootfs, "sleep", "1000",
                      flags=("-d", "--name", "web", "-p", f"127.0.0.1:{free_port()}:80"))
        assert started.returncode == 0, started.stderr
        left = iptables_leftovers(lease.name, lease.subnet)
        # ipMasq's POSTROUTING rule and chain, portmap's DNAT rule and chain at least.
        assert len([rule for rule in left if rule.startswith("nat: -A ")]) >= 2, left
        assert len([rule for rule in left if rule.startswith("nat: -N CNI-")]) == 2, left
        assert link_exists(lease.bridge)
        net.kill()  # nobody runs DEL
        net.close()  # what the fixture does after the test (again then: a no-op)
        assert not link_exists(lease.bridge)
        assert iptables_leftovers(lease.name, lease.subnet) == []
        assert not lease.held

    def test_none_leaves_nothing_behind_after_a_crash(self, net: RuntimeDaemon,
                                                      rootfs: Path) -> None:
        """A none container's namespace is held by its processes only: it dies with them."""
        started = run(net, rootfs, "sleep", "1000", flags=("-d", "--name", "quiet",
                                                           "--net", "none"))
        assert started.returncode == 0, started.stderr
        pid = net.client().task("quiet").pid
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        assert inode != os.stat("/proc/self/ns/net").st_ino  # a namespace of its own
        assert not namespace_pinned(inode)
        assert nothing_attached(net) == []
        net.kill()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), what=f"pid {pid} to exit")
        assert not namespace_pinned(inode)
        net.restart()
        assert nothing_attached(net) == []
        wait_until(lambda: net.client().task("quiet").status == "stopped",
                   what="the task to be stopped")
        removed = moorage(net.address, "containers", "rm", "-f", "quiet")
        assert removed.returncode == 0, removed.stderr
        assert nothing_attached(net) == []
