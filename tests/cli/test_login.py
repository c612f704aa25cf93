"""``moorage login`` / ``logout``: the caller's Docker config.json, helpers, and pulls using it.

The daemon never reads the caller's config (``DOCKER_CONFIG`` is set for the
CLI only): a pull from the auth registry succeeds only because the CLI sent the
credentials ``login`` saved.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import ImageLayout
from tests.fixtures.plugin import AUTH_PASSWORD, AUTH_USER
from tests.fixtures.registry import Registry
from tests.plugins.runtime.helpers import RuntimeDaemon

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def private_ref(auth_registry: Registry, busybox_layout: ImageLayout) -> str:
    """busybox in the auth registry, pullable only with credentials."""
    return auth_registry.push_layout(busybox_layout.path, busybox_layout.ref_name,
                                     "login/busybox:1")


class Caller:
    """The CLI run as a user whose Docker config lives in ``home`` (and helpers on ``bin``)."""

    def __init__(self, address: str, home: Path) -> None:
        self.address = address
        self.config_dir = home / "docker"
        self.bin = home / "bin"
        self.bin.mkdir(parents=True)

    @property
    def config(self) -> Path:
        return self.config_dir / "config.json"

    def __call__(self, *args: str, input: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_CONFIG": str(self.config_dir),
               "PATH": f"{self.bin}:{os.environ['PATH']}"}
        return subprocess.run(
            [sys.executable, "-m", "runtime.cli.main", "--address", self.address, *args],
            input=input, capture_output=True, text=True, timeout=120, env=env, check=False)

    def write_config(self, doc: dict[str, object]) -> None:
        self.config_dir.mkdir(exist_ok=True)
        self.config.write_text(json.dumps(doc))

    def helper(self, name: str) -> Path:
        """A ``docker-credential-<name>`` keeping one secret in a file, logging each verb."""
        store, log = self.bin / f"{name}.json", self.bin / f"{name}.log"
        script = self.bin / f"docker-credential-{name}"
        script.write_text(f"""#!/bin/sh
echo "$1 $(cat | tr -d '\\n' | head -c 300)" >> {log}
case "$1" in
  store) tail -n 1 {log} | cut -d' ' -f2- > {store} ;;
  get) if [ -s {store} ]; then cat {store}; else
         echo "credentials not found in native keychain"; exit 1; fi ;;
  erase) if [ -s {store} ]; then rm {store}; else
           echo "credentials not found in native keychain"; exit 1; fi ;;
esac
""")
        script.chmod(0o755)
        return store


@pytest.fixture
def caller(rd: RuntimeDaemon, tmp_path: Path) -> Caller:
    return Caller(rd.address, tmp_path / "user")


def login(caller: Caller, registry: Registry, password: str = AUTH_PASSWORD
          ) -> subprocess.CompletedProcess[str]:
    return caller("login", "-u", AUTH_USER, "--password-stdin", registry.host,
                  input=password + "\n")


def test_login_then_pull_uses_the_saved_credentials_and_logout_forgets_them(
        caller: Caller, auth_registry: Registry, private_ref: str) -> None:
    refused = caller("pull", "-q", "--plain-http", private_ref)
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr

    result = login(caller, auth_registry)
    assert (result.returncode, result.stdout) == (0, "Login Succeeded\n"), result.stderr
    doc = json.loads(caller.config.read_text())
    assert base64.b64decode(doc["auths"][auth_registry.host]["auth"]).decode() == (
        f"{AUTH_USER}:{AUTH_PASSWORD}")
    assert stat.S_IMODE(caller.config.stat().st_mode) == 0o600

    pulled = caller("pull", "-q", "--plain-http", private_ref)
    assert (pulled.returncode, pulled.stdout) == (0, f"{private_ref}\n"), pulled.stderr

    out = caller("logout", auth_registry.host)
    assert out.stdout == f"Removing login credentials for {auth_registry.host}\n"
    assert json.loads(caller.config.read_text())["auths"] == {}
    assert caller("logout", auth_registry.host).stdout == (
        f"Not logged in to {auth_registry.host}\n")
    caller("rmi", private_ref)
    again = caller("pull", "-q", "--plain-http", private_ref)
    assert again.returncode != 0 and "unauthenticated" in again.stderr


def test_run_pulls_and_push_pushes_with_the_saved_credentials(
        caller: Caller, auth_registry: Registry, private_ref: str) -> None:
    assert login(caller, auth_registry).returncode == 0
    result = caller("run", "--rm", "--net", "none", private_ref, "echo", "in")
    assert (result.returncode, result.stdout) == (0, "in\n"), result.stderr
    copy = auth_registry.ref("login/pushed:1")
    pushed = caller("images", "push", "-q", "--plain-http", copy, private_ref)
    assert pushed.returncode == 0, pushed.stderr
    assert auth_registry.inspect("login/pushed:1")["Digest"]


def test_login_with_a_wrong_password_exits_125_and_writes_nothing(
        caller: Caller, auth_registry: Registry) -> None:
    result = login(caller, auth_registry, password="wrong")
    assert result.returncode == 125
    assert f"login {auth_registry.host}" in result.stderr
    assert f"rejected the credentials of {AUTH_USER!r}" in result.stderr
    assert not caller.config.exists()

    kept = {"auths": {"elsewhere.example:5000": {"auth": "dTpw"}}, "detachKeys": "ctrl-q"}
    caller.write_config(kept)
    assert login(caller, auth_registry, password="wrong").returncode == 125
    assert json.loads(caller.config.read_text()) == kept


def test_login_and_pull_go_through_the_credentials_store_helper(
        caller: Caller, auth_registry: Registry, private_ref: str) -> None:
    store = caller.helper("teststore")
    caller.write_config({"credsStore": "teststore"})
    result = login(caller, auth_registry)
    assert result.returncode == 0, result.stderr
    assert json.loads(store.read_text()) == {
        "ServerURL": auth_registry.host, "Username": AUTH_USER, "Secret": AUTH_PASSWORD}
    doc = json.loads(caller.config.read_text())
    assert doc["auths"] == {auth_registry.host: {}}  # the secret is the helper's
    assert AUTH_PASSWORD not in caller.config.read_text()

    pulled = caller("pull", "-q", "--plain-http", private_ref)
    assert pulled.returncode == 0, pulled.stderr
    verbs = [line.split()[0] for line in (caller.bin / "teststore.log").read_text().splitlines()]
    assert verbs == ["store", "get"]

    assert caller("logout", auth_registry.host).returncode == 0
    assert not store.exists()
    assert [*verbs, "erase"] == [
        line.split()[0] for line in (caller.bin / "teststore.log").read_text().splitlines()]


def test_a_per_host_credential_helper_wins_over_the_store(
        caller: Caller, auth_registry: Registry, private_ref: str) -> None:
    caller.helper("teststore")
    mine = caller.helper("forhost")
    caller.write_config({"credsStore": "teststore",
                         "credHelpers": {auth_registry.host: "forhost"}})
    assert login(caller, auth_registry).returncode == 0
    assert json.loads(mine.read_text())["Secret"] == AUTH_PASSWORD
    assert not (caller.bin / "teststore.log").exists()
    pulled = caller("pull", "-q", "--plain-http", private_ref)
    assert pulled.returncode == 0, pulled.stderr


def test_a_missing_credential_helper_is_named(caller: Caller, auth_registry: Registry) -> None:
    caller.write_config({"credsStore": "absent"})
    result = login(caller, auth_registry)
    assert result.returncode == 125
    assert "docker-credential-absent is not on PATH" in result.stderr
