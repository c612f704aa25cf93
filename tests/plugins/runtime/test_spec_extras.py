"""What run's newer flags put in a spec and its bundle: TERM, --init, -P, copy-up, names.

Pure data and a temporary directory: no runtime needed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from runtime.api.specs import ImageConfig, SpecOptions
from runtime.core.errors import FailedPrecondition, InvalidArgument
from runtime.pkg import oci
from runtime.pkg.copyup import copy_up_volumes, resolve_in_root
from runtime.pkg.netconf import DnsSettings, decode_hosts
from runtime.pkg.oci.spec import (
    EXPOSED_PORTS_ANNOTATION,
    INIT_PATH,
    PUBLISH_ALL_ANNOTATION,
    generate_spec,
)
from runtime.plugins.network import api as network
from runtime.plugins.network import etc_files, task


def env(spec: dict[str, object]) -> list[str]:
    return [e for e in spec["process"]["env"] if e.startswith("TERM=")]  # type: ignore[index]


class TestTerm:
    def test_a_terminal_gets_term_xterm(self) -> None:
        assert env(generate_spec("ns", "c", None, SpecOptions(args=["sh"], terminal=True))) == [
            "TERM=xterm"]

    def test_no_terminal_no_term(self) -> None:
        assert env(generate_spec("ns", "c", None, SpecOptions(args=["sh"]))) == []

    def test_the_users_or_the_images_term_wins(self) -> None:
        mine = SpecOptions(args=["sh"], terminal=True, env=["TERM=dumb"])
        assert env(generate_spec("ns", "c", None, mine)) == ["TERM=dumb"]
        image = ImageConfig(cmd=["sh"], env=["TERM=vt100"])
        assert env(generate_spec("ns", "c", image, SpecOptions(terminal=True))) == [
            "TERM=vt100"]


    def test_an_exec_with_a_terminal_gets_term_xterm_unless_set(self, tmp_path: Path) -> None:
        from runtime.api.tasks import ExecRequest
        from runtime.plugins.runtime.runc.bundle import exec_process_spec

        container = generate_spec("ns", "c", None, SpecOptions(args=["sh"]))
        tty = ExecRequest(exec_id="e", args=["sh"], terminal=True)
        assert env({"process": exec_process_spec(container, tty, tmp_path)}) == ["TERM=xterm"]
        own = ExecRequest(exec_id="e", args=["sh"], terminal=True, env=["TERM=screen"])
        assert env({"process": exec_process_spec(container, own, tmp_path)}) == ["TERM=screen"]
        plain = ExecRequest(exec_id="e", args=["sh"])
        assert env({"process": exec_process_spec(container, plain, tmp_path)}) == []


class TestInit:
    def test_init_is_bound_read_only_and_prefixes_the_command(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        binary = tmp_path / "catatonit"
        binary.write_text("")
        binary.chmod(0o755)
        monkeypatch.setattr(oci.spec, "INIT_BINARIES", (str(tmp_path / "absent"), str(binary)))
        spec = generate_spec("ns", "c", None, SpecOptions(args=["sleep", "1"], init=True))
        assert spec["process"]["args"] == [INIT_PATH, "--", "sleep", "1"]
        [mount] = [m for m in spec["mounts"] if m["destination"] == INIT_PATH]
        assert mount["source"] == str(binary) and "ro" in mount["options"]

    def test_init_without_a_binary_is_a_failed_precondition(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setattr(oci.spec, "INIT_BINARIES", (str(tmp_path / "absent"),))
        with pytest.raises(FailedPrecondition, match="apt-get install catatonit"):
            generate_spec("ns", "c", None, SpecOptions(args=["true"], init=True))


class TestPublishAll:
    def test_exposed_ports_are_recorded_and_published_with_p(self) -> None:
        image = ImageConfig(cmd=["sh"], exposed_ports={"80/tcp": {}, "53/udp": {}, "8080": {},
                                                       "bad/sctp": {}})
        spec = generate_spec("ns", "c", image, SpecOptions(publish_all=True))
        annotations = spec["annotations"]
        assert annotations[EXPOSED_PORTS_ANNOTATION] == "80/tcp,53/udp,8080/tcp"
        assert annotations[PUBLISH_ALL_ANNOTATION] == "true"
        given = [network.parse_publish("9000:80")]
        picked = task._exposed(annotations, given)
        assert [(p.host_port, p.container_port, p.protocol) for p in picked] == [
            (0, 53, "udp"), (0, 8080, "tcp")]

    def test_without_p_nothing_is_published(self) -> None:
        image = ImageConfig(cmd=["sh"], exposed_ports={"80/tcp": {}})
        annotations = generate_spec("ns", "c", image, SpecOptions())["annotations"]
        assert PUBLISH_ALL_ANNOTATION not in annotations
        assert task._exposed(annotations, []) == []


class TestNameFiles:
    def test_extra_hosts_come_last(self) -> None:
        text = etc_files.etc_hosts("web", None, extra=decode_hosts('["db:10.0.0.2"]'))
        assert text.startswith("127.0.0.1\tlocalhost") and text.endswith("10.0.0.2\tdb\n")

    def test_dns_replaces_each_kind_it_gives(self, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
        host = tmp_path / "resolv.conf"
        host.write_text("nameserver 192.0.2.1\nsearch lan\noptions edns0\n")
        monkeypatch.setattr(etc_files, "HOST_RESOLV", host)
        text = etc_files.resolv_conf(dns=DnsSettings(servers=["192.0.2.9"]))
        assert text.splitlines() == ["search lan", "options edns0", "nameserver 192.0.2.9"]
        text = etc_files.resolv_conf(dns=DnsSettings(search=["a.example", "b.example"],
                                                   options=["ndots:2"]))
        assert text.splitlines() == ["nameserver 192.0.2.1", "search a.example b.example",
                                     "options ndots:2"]

    @pytest.mark.parametrize("value", ['["nocolon"]', '["db:1.2.3"]', '["a b:1.2.3.4"]', "{"])
    def test_bad_extra_hosts_are_refused(self, value: str) -> None:
        with pytest.raises(InvalidArgument):
            decode_hosts(value)

    def test_bad_dns_servers_are_refused(self) -> None:
        with pytest.raises(InvalidArgument, match=r"'dns\.example'"):
            DnsSettings(servers=["dns.example"])


class TestCopyUp:
    def test_symlinks_resolve_inside_the_root(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        (root / "usr" / "lib").mkdir(parents=True)
        (root / "lib").symlink_to("usr/lib")
        (root / "up").symlink_to("../../../..")
        (root / "abs").symlink_to("/usr/lib")
        assert resolve_in_root(str(root), "/lib/x") == str(root / "usr" / "lib" / "x")
        assert resolve_in_root(str(root), "/up/etc") == str(root / "etc")
        assert resolve_in_root(str(root), "/abs") == str(root / "usr" / "lib")
        assert resolve_in_root(str(root), "/../../etc") == str(root / "etc")

    def test_only_empty_named_volumes_are_filled(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        (root / "data").mkdir(parents=True)
        (root / "data" / "f").write_text("image")
        os.mkfifo(root / "data" / "pipe")
        if os.geteuid() == 0:
            os.mknod(root / "data" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        empty, full, bind = (tmp_path / n for n in ("empty", "full", "bind"))
        for d in (empty, full, bind):
            d.mkdir()
        (full / "mine").write_text("kept")
        spec = {"mounts": [{"destination": "/data", "source": str(empty)},
                           {"destination": "/full", "source": str(full)},
                           {"destination": "/data2", "source": str(bind)}]}
        (root / "full").mkdir()
        (root / "full" / "g").write_text("image")
        named = json.dumps({"/data": "fresh", "/full": "used"})  # /data2: a bind, not named
        assert copy_up_volumes(spec, str(root), named) == ["fresh"]
        assert (empty / "f").read_text() == "image" and (empty / "pipe").is_fifo()
        assert not (empty / "null").exists()  # no device node of the image's on the host
        assert sorted(os.listdir(full)) == ["mine"] and os.listdir(bind) == []
        assert copy_up_volumes(spec, str(root), None) == []
