"""More of what docker users type: -P/-p PORT, --init, --add-host, --dns, TERM with -t,
volume copy-up, the image's StopSignal, ``network create|rm``, and their bad values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import busybox_image
from tests.fixtures.network import lease_network, remove_network
from tests.fixtures.registry import Registry
from tests.fixtures.system import unavailable
from tests.plugins.runtime.helpers import (
    RuntimeDaemon,
    SharedDaemon,
    moorage,
    require_runtime_host,
    wait_until,
)

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")


def ok(rd: RuntimeDaemon, *args: str) -> str:
    result = moorage(rd.address, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run(rd: RuntimeDaemon, rootfs: Path, *flags: str, script: str) -> str:
    return ok(rd, "run", "--rm", "--net", "none", *flags, "--rootfs", str(rootfs), "busybox",
              "sh", "-c", script)


@pytest.fixture(scope="module")
def special_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Busybox whose config says StopSignal SIGQUIT and exposes 80/tcp and 53/udp."""
    layout = busybox_image(tmp_path_factory.mktemp("special"), extra_config={
        "StopSignal": "SIGQUIT", "ExposedPorts": {"80/tcp": {}, "53/udp": {}}})
    return registry.push_layout(layout.path, layout.ref_name, "extras/special:1")


class TestNamesAndTerminal:
    def test_add_host_and_dns_reach_hosts_and_resolv_conf(self, rd: RuntimeDaemon,
                                                          rootfs: Path) -> None:
        out = run(rd, rootfs, "--add-host", "db:10.1.2.3", "--add-host", "v6=fd00::1",
                  "--dns", "192.0.2.53", "--dns-search", "example.org", "--dns-option",
                  "ndots:2", script="cat /etc/hosts; echo ---; cat /etc/resolv.conf")
        hosts, _, resolv = out.partition("---\n")
        assert "10.1.2.3\tdb\n" in hosts and "fd00::1\tv6\n" in hosts
        assert "127.0.0.1\tlocalhost" in hosts
        lines = resolv.splitlines()
        assert [x for x in lines if x.startswith("nameserver")] == ["nameserver 192.0.2.53"]
        assert "search example.org" in lines and "options ndots:2" in lines

    def test_tty_sets_term_xterm_unless_the_user_set_term(self, rd: RuntimeDaemon,
                                                           rootfs: Path) -> None:
        for name, flags in (("plain", ()), ("tty", ("-t",)), ("own", ("-t", "-e", "TERM=dumb"))):
            ok(rd, "create", "--name", name, "--net", "none", *flags, "--rootfs", str(rootfs),
               "busybox", "true")
        env = {c.id: [e for e in c.spec["process"]["env"] if e.startswith("TERM=")]
               for c in rd.client().containers()}
        assert env == {"plain": [], "tty": ["TERM=xterm"], "own": ["TERM=dumb"]}

    def test_init_runs_the_command_under_catatonit_as_pid_1(self, rd: RuntimeDaemon,
                                                            rootfs: Path) -> None:
        if not os.path.isfile("/usr/bin/catatonit"):
            unavailable("catatonit not installed (apt-get install catatonit)")
        out = run(rd, rootfs, "--init", script="tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$")
        first, pid = out.splitlines()
        assert first.startswith("/sbin/moorage-init -- sh -c")
        assert pid != "1"
        result = moorage(rd.address, "run", "--rm", "--net", "none", "--init", "--rootfs",
                         str(rootfs), "busybox", "sh", "-c", "exit 7")
        assert result.returncode == 7, result.stderr


class TestPorts:
    def test_p_with_a_container_port_only_gets_a_random_host_port(self, rd: RuntimeDaemon,
                                                                   rootfs: Path) -> None:
        ok(rd, "run", "-d", "--name", "web", "-p", "80", "-p", "127.0.0.1::81/udp",
           "--rootfs", str(rootfs), "busybox", *SLEEPER)
        shown = ok(rd, "port", "web").splitlines()
        assert len(shown) == 2
        tcp = next(line for line in shown if line.startswith("80/tcp -> 0.0.0.0:"))
        udp = next(line for line in shown if line.startswith("81/udp -> 127.0.0.1:"))
        for line in (tcp, udp):
            assert int(line.rpartition(":")[2]) > 0
        picked = tcp.rpartition(":")[2]
        [row] = json.loads(ok(rd, "ps", "--format", "json"))
        assert f"0.0.0.0:{picked}->80/tcp" in row["Ports"]
        ok(rd, "rm", "-f", "web")

    def test_P_publishes_every_exposed_port_of_the_image(self, rd: RuntimeDaemon,
                                                          special_image: str) -> None:
        ok(rd, "pull", "--plain-http", "-q", special_image)
        ok(rd, "run", "-d", "--name", "all", "-P", special_image, *SLEEPER)
        shown = sorted(line.partition(" -> ")[0] for line in ok(rd, "port", "all").splitlines())
        assert shown == ["53/udp", "80/tcp"]
        port = int(ok(rd, "port", "all", "80/tcp").strip().rpartition(":")[2])
        assert port > 0
        ok(rd, "rm", "-f", "all")


class TestStopSignal:
    def test_stop_sends_the_images_stop_signal_first(self, rd: RuntimeDaemon,
                                                     special_image: str) -> None:
        ok(rd, "pull", "--plain-http", "-q", special_image)
        script = ("trap 'exit 3' QUIT; trap '' TERM; echo up > /tmp/up; "
                  "while true; do sleep 0.1; done")
        ok(rd, "run", "-d", "--net", "none", "--name", "quits", special_image, "sh", "-c",
           script)
        wait_until(lambda: moorage(rd.address, "exec", "quits", "cat", "/tmp/up").stdout
                   == "up\n", timeout=10)
        ok(rd, "stop", "-t", "20", "quits")
        # Exit status 3 is the QUIT trap's: the image's signal ended it, not the SIGKILL (137).
        assert ok(rd, "inspect", "-f", "{{.State.ExitCode}}", "quits").strip() == "3"
        # restart goes through the same stop; -s still wins over the image's signal.
        ok(rd, "restart", "-t", "20", "quits")
        wait_until(lambda: moorage(rd.address, "exec", "quits", "cat", "/tmp/up").stdout
                   == "up\n", timeout=10)
        ok(rd, "stop", "-s", "SIGTERM", "-t", "1", "quits")
        # TERM is trapped to nothing, so only the SIGKILL after the timeout ends it.
        assert ok(rd, "inspect", "-f", "{{.State.ExitCode}}", "quits").strip() == "137"


class TestVolumeCopyUp:
    def test_a_new_volume_takes_the_images_content_with_modes_and_owners(
            self, rd: RuntimeDaemon, rootfs: Path) -> None:
        data = rootfs / "srv" / "data"
        (data / "sub").mkdir(parents=True)
        (data / "conf").write_text("from the image\n")
        os.chmod(data / "conf", 0o640)
        os.chown(data / "conf", 1234, 5678)
        os.chmod(data, 0o750)
        os.chown(data, 99, 98)
        (data / "link").symlink_to("conf")
        out = run(rd, rootfs, "-v", "fresh:/srv/data",
                  script="cat /srv/data/link; echo changed > /srv/data/conf")
        assert out == "from the image\n"
        [doc] = json.loads(ok(rd, "volume", "inspect", "fresh"))
        mountpoint = Path(doc["mountpoint"])
        info = (mountpoint / "conf").stat()
        assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == ("0o640", 1234, 5678)
        top = mountpoint.stat()
        assert (oct(top.st_mode & 0o7777), top.st_uid, top.st_gid) == ("0o750", 99, 98)
        assert os.readlink(mountpoint / "link") == "conf" and (mountpoint / "sub").is_dir()
        # Not empty any more: the volume's own content wins from now on.
        assert run(rd, rootfs, "-v", "fresh:/srv/data", script="cat /srv/data/conf") == (
            "changed\n")
        # nocopy (and --mount's volume-nocopy) leave a new volume empty.
        assert run(rd, rootfs, "-v", "bare:/srv/data:nocopy", script="ls -A /srv/data") == ""
        assert run(rd, rootfs, "--mount", "type=volume,src=bare2,dst=/srv/data,volume-nocopy=true",
                   script="ls -A /srv/data") == ""
        # --mount type=volume copies up too.
        assert run(rd, rootfs, "--mount", "type=volume,src=viamount,dst=/srv/data",
                   script="cat /srv/data/conf") == "from the image\n"

    def test_copy_up_never_follows_an_image_symlink_out_of_the_root(
            self, rd: RuntimeDaemon, rootfs: Path, tmp_path: Path) -> None:
        outside = tmp_path / "host-secret"
        outside.mkdir()
        (outside / "key").write_text("host only\n")
        (rootfs / "escape").symlink_to(str(outside))  # absolute: the container's own /tmp/...
        out = run(rd, rootfs, "-v", "trap:/escape", script="ls -A /escape")
        assert out == ""
        [doc] = json.loads(ok(rd, "volume", "inspect", "trap"))
        assert os.listdir(doc["mountpoint"]) == []


class TestNetworks:
    @pytest.fixture
    def lease(self) -> Iterator[object]:
        lease = lease_network("mk" + os.urandom(3).hex())
        try:
            yield lease
        finally:
            lease.release()
            remove_network(lease.name, lease.bridge, lease.subnet)

    def test_network_create_run_rm_refused_while_in_use(self, rd: RuntimeDaemon, rootfs: Path,
                                                        lease: object) -> None:
        name, bridge, subnet = lease.name, lease.bridge, lease.subnet  # type: ignore[attr-defined]
        gateway = subnet.replace(".0/24", ".254")
        result = moorage(rd.address, "network", "create", "--subnet", subnet, "--gateway",
                         gateway, "--bridge", bridge, name)
        assert (result.returncode, result.stdout) == (0, f"{name}\n"), result.stderr
        assert name in ok(rd, "network", "ls", "-q").split()
        again = moorage(rd.address, "network", "create", "--subnet", subnet, name)
        assert again.returncode == 125 and "already exists" in again.stderr
        ok(rd, "run", "-d", "--name", "member", "--net", name, "--rootfs", str(rootfs),
           "busybox", *SLEEPER)
        [doc] = json.loads(ok(rd, "network", "inspect", name))
        [member] = doc["containers"]
        assert member["id"] == "member" and member["ips"][0].startswith(subnet[:-5])
        plugin = json.loads(Path(doc["source"]).read_text())["plugins"][0]
        assert plugin["bridge"] == bridge
        assert plugin["ipam"]["ranges"][0][0]["gateway"] == gateway
        refused = moorage(rd.address, "network", "rm", name)
        assert refused.returncode == 125
        assert f"network {name!r} is in use by container member" in refused.stderr
        assert name in ok(rd, "network", "ls", "-q").split()
        ok(rd, "rm", "-f", "member")
        assert ok(rd, "network", "rm", name) == f"{name}\n"
        assert name not in ok(rd, "network", "ls", "-q").split()

    def test_the_default_network_is_not_removed(self, rd: RuntimeDaemon) -> None:
        for name in ("bridge", ok(rd, "network", "ls", "-q").split()[0]):
            refused = moorage(rd.address, "network", "rm", name)
            assert refused.returncode == 125 and "default network" in refused.stderr


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDaemon]:
    """Daemons for one class's tests (see :class:`SharedDaemon`)."""
    require_runtime_host()
    shared = SharedDaemon(tmp_path_factory)
    yield shared
    shared.close()


class TestBadValues:
    @pytest.fixture
    def rd(self, shared: SharedDaemon) -> RuntimeDaemon:
        """A daemon as a fresh one is (these refusals change nothing), shared by the class."""
        return shared.daemon()

    @pytest.mark.parametrize(("flags", "named"), [
        (("-p", "80:"), "-p '80:'"),
        (("-p", "70000"), "-p '70000'"),
        (("-p", "1.2.3.4::http"), "-p '1.2.3.4::http'"),
        (("-v", "data:relative"), "-v 'data:relative'"),
        (("--add-host", "nocolon"), "--add-host 'nocolon'"),
        (("--add-host", "db:999.1.1.1"), "--add-host 'db:999.1.1.1'"),
        (("--add-host", "bad name:10.0.0.1"), "--add-host 'bad name:10.0.0.1'"),
        (("--dns", "resolver.example"), "--dns 'resolver.example'"),
        (("--dns-search", "bad domain"), "--dns-search 'bad domain'"),
        (("--dns-option", "two words"), "--dns-option 'two words'"),
    ])
    def test_bad_values_are_125_naming_the_value_and_change_nothing(
            self, rd: RuntimeDaemon, rootfs: Path, flags: tuple[str, ...], named: str) -> None:
        for verb in ("run", "create"):
            result = moorage(rd.address, verb, *flags, "--rootfs", str(rootfs), "busybox",
                             "true")
            assert result.returncode == 125, (verb, result.stderr)
            assert named in result.stderr
        assert rd.client().containers() == []
        assert ok(rd, "volume", "ls", "-q") == ""

    @pytest.mark.parametrize(("flags", "named"), [
        (("--subnet", "8.8.8.0/24"), "not a private range"),
        (("--subnet", "10.91.0.0/24", "--gateway", "10.92.0.1"), "gateway 10.92.0.1"),
        (("--bridge", "a-bridge-name-too-long"), "bridge 'a-bridge-name-too-long'"),
    ])
    def test_bad_network_values_are_125_and_create_nothing(
            self, rd: RuntimeDaemon, flags: tuple[str, ...], named: str) -> None:
        before = ok(rd, "network", "ls", "-q")
        result = moorage(rd.address, "network", "create", *flags, "badnet")
        assert result.returncode == 125 and named in result.stderr, result.stderr
        assert ok(rd, "network", "ls", "-q") == before
