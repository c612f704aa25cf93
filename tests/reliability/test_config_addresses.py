"""Addresses and paths in ``plugins.toml``: the ``unix://`` form works, bad forms are refused.

``[api] address = "unix:///path"`` used to make a socket at the relative path
``./unix:/path`` in the daemon's working directory. Now ``unix:///path`` and ``/path``
are the two accepted forms; a relative path, an empty one or another scheme is refused
naming the key, by the daemon (which then starts nothing and creates nothing) and by
``moorage config check``. Every path-valued key is held to the same rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.core.config import ConfigError, parse_config
from tests.fixtures.daemon import Daemon
from tests.fixtures.system import require_root

BAD_ADDRESSES = {
    "unix-relative": ("unix://run/m.sock", "relative path"),
    "bare-relative": ("m.sock", "relative path"),
    "dot-relative": ("./run/m.sock", "relative path"),
    "one-slash-scheme": ("unix:/run/m.sock", "relative path"),
    "tcp-scheme": ("tcp://127.0.0.1:7373", "unknown scheme 'tcp'"),
    "http-scheme": ("http://127.0.0.1:7373", "unknown scheme 'http'"),
    "no-path": ("unix://", "names no socket path"),
    "empty": ("", "names no socket path"),
}

#: Path-valued keys elsewhere: (TOML, the section and key the error must name).
BAD_PATHS = {
    "root": ('root = "var/lib/moorage"', "[top level] key 'root'"),
    "state": ('state = "unix:///run/moorage"', "[top level] key 'state'"),
    "token_file": ('[api]\ntcp_address = "127.0.0.1:7373"\ntoken_file = "token"',
                   "[api] key 'token_file'"),
    "tcp_address": ('[api]\ntcp_address = "unix:///run/x.sock"', "[api] key 'tcp_address'"),
    "hosts_dir": ('[plugins."images.store"]\nhosts_dir = "certs.d"',
                  "[plugins.\"images.store\"] key 'hosts_dir'"),
    "docker_config": ('[plugins."images.store"]\ndocker_config = "~/.docker/config.json"',
                      "[plugins.\"images.store\"] key 'docker_config'"),
    "runc_root": ('[plugins."runtime.runc"]\nroot = "runc-root"',
                  "[plugins.\"runtime.runc\"] key 'root'"),
    "runc_binary": ('[plugins."runtime.runc"]\nbinary = "bin/runc"',
                    "[plugins.\"runtime.runc\"] key 'binary'"),
    "overlay_root": ('[plugins."snapshotter.overlayfs"]\nroot_path = "snapshots"',
                     "[plugins.\"snapshotter.overlayfs\"] key 'root_path'"),
    "cni_bin_dirs": ('[plugins."network.cni"]\nbin_dirs = ["/usr/lib/cni", "cni/bin"]',
                     "[plugins.\"network.cni\"] key 'bin_dirs'"),
    "cni_conf_dir": ('[plugins."network.cni"]\nconf_dir = "net.d"',
                     "[plugins.\"network.cni\"] key 'conf_dir'"),
}


def _file(tmp_path: Path, text: str) -> Path:
    head = f'root = "{tmp_path / "root"}"\nstate = "{tmp_path / "state"}"\n'
    path = tmp_path / "plugins.toml"
    path.write_text(text if text.startswith(("root", "state")) else head + text)
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("name", sorted(BAD_ADDRESSES))
def test_bad_api_address_is_refused_naming_the_key(name: str) -> None:
    address, says = BAD_ADDRESSES[name]
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[api]\naddress = "{address}"\n', "plugins.toml")
    message = str(caught.value)
    assert message.startswith("plugins.toml: [api] key 'address': "), message
    assert says in message, message


@pytest.mark.parametrize("name", sorted(BAD_ADDRESSES))
def test_config_check_refuses_bad_api_address(tmp_path: Path, name: str) -> None:
    address, says = BAD_ADDRESSES[name]
    path = _file(tmp_path, f'[api]\naddress = "{address}"\n')
    done = _cli("config", "check", str(path), cwd=tmp_path)
    assert done.returncode != 0, done
    assert f"{path}: [api] key 'address'" in done.stderr and says in done.stderr, done


@pytest.mark.parametrize("name", sorted(BAD_PATHS))
def test_config_check_refuses_relative_paths_naming_the_key(tmp_path: Path, name: str) -> None:
    text, key = BAD_PATHS[name]
    path = _file(tmp_path, text + "\n")
    done = _cli("config", "check", str(path), cwd=tmp_path)
    assert done.returncode != 0, done
    assert f"{path}: {key}" in done.stderr, done


def test_unix_url_and_absolute_path_are_one_address() -> None:
    assert parse_config('[api]\naddress = "unix:///run/x/m.sock"').api.address == "/run/x/m.sock"
    assert parse_config('[api]\naddress = "/run/x/m.sock"').api.address == "/run/x/m.sock"
    config = parse_config('[plugins."runtime.runc"]\nbinary = "runc"\nconmon = "/usr/bin/conmon"')
    assert config.plugins["runtime.runc"]["binary"] == "runc"  # a name on PATH is fine


@pytest.mark.parametrize("name", ["unix-relative", "tcp-scheme"])
def test_daemon_refuses_bad_address_and_creates_nothing(tmp_path: Path, name: str) -> None:
    """It exits 1 naming the key; its working directory stays empty."""
    address, says = BAD_ADDRESSES[name]
    path = _file(tmp_path, f'[api]\naddress = "{address}"\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = _cli("daemon", "--config", str(path), cwd=cwd)
    assert done.returncode == 1, done
    assert "[api] key 'address'" in done.stderr and says in done.stderr, done
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "root").exists()


@pytest.mark.root
def test_daemon_serves_on_a_unix_url_address(tmp_path: Path) -> None:
    require_root()
    daemon = Daemon(tmp_path / "d")
    text = daemon.config_path.read_text()
    plain = f'address = "{daemon.socket_path}"'
    assert plain in text
    daemon.config_path.write_text(text.replace(plain, f'address = "unix://{daemon.socket_path}"'))
    with daemon:
        assert daemon.client().healthz().status == "ok"
        assert daemon.socket_path.is_socket()
