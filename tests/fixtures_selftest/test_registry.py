"""Self-tests of the local registry fixture."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from tests.fixtures.images import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, ImageLayout
from tests.fixtures.plugin import AUTH_PASSWORD, AUTH_USER
from tests.fixtures.registry import Registry, RegistryError
from tests.fixtures.system import require_binary

pytest_plugins = ["tests.fixtures.plugin"]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """Plain HTTP request; headers come back as a case-insensitive ``Message``."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def _skopeo_inspect(ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    skopeo = require_binary("skopeo")
    return subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", *extra, f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_pushed_busybox_digest(
    pushed_busybox: str, busybox_layout: ImageLayout, registry: Registry
) -> None:
    assert pushed_busybox == f"{registry.host}/library/busybox:latest"
    proc = _skopeo_inspect(pushed_busybox)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Digest"] == busybox_layout.descriptor.digest


def test_distribution_api(
    pushed_busybox: str, busybox_layout: ImageLayout, registry: Registry
) -> None:
    status, _, body = _request(f"{registry.url}/v2/_catalog")
    assert status == 200
    assert "library/busybox" in json.loads(body)["repositories"]
    status, headers, body = _request(
        f"{registry.url}/v2/library/busybox/manifests/latest",
        headers={"Accept": MEDIA_TYPE_MANIFEST},
    )
    assert status == 200
    assert headers["Docker-Content-Digest"] == busybox_layout.descriptor.digest
    assert (
        body
        == busybox_layout.path.joinpath(
            "blobs", "sha256", busybox_layout.descriptor.hex
        ).read_bytes()
    )


def test_delete_enabled(registry: Registry, multilayer_layout: ImageLayout) -> None:
    # Own repository name: the registry is shared by the whole session.
    registry.push_layout(multilayer_layout, multilayer_layout.ref_name, "selftest/delete:v1")
    digest = multilayer_layout.descriptor.digest
    url = f"{registry.url}/v2/selftest/delete/manifests/{digest}"
    status, _, _ = _request(url, method="DELETE")
    assert status == 202
    status, _, _ = _request(url, headers={"Accept": MEDIA_TYPE_MANIFEST})
    assert status == 404


def test_push_multiarch_index(registry: Registry, multiarch_layout: ImageLayout) -> None:
    ref = registry.push_layout(
        multiarch_layout, multiarch_layout.ref_name, "selftest/multiarch:latest", all_platforms=True
    )
    proc = _skopeo_inspect(ref, "--raw")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == multiarch_layout.manifest()
    assert json.loads(proc.stdout)["mediaType"] == MEDIA_TYPE_INDEX


def test_auth_registry(auth_registry: Registry, busybox_layout: ImageLayout) -> None:
    ref = auth_registry.push_layout(busybox_layout, busybox_layout.ref_name, "private/bb:1")

    denied = _skopeo_inspect(ref)
    assert denied.returncode != 0
    assert "unauthorized" in denied.stderr.lower() or "401" in denied.stderr

    wrong = _skopeo_inspect(ref, "--creds", f"{AUTH_USER}:wrong")
    assert wrong.returncode != 0

    ok = _skopeo_inspect(ref, "--creds", f"{AUTH_USER}:{AUTH_PASSWORD}")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Digest"] == busybox_layout.descriptor.digest
    assert auth_registry.inspect("private/bb:1")["Digest"] == busybox_layout.descriptor.digest

    status, headers, _ = _request(f"{auth_registry.url}/v2/")
    assert status == 401
    assert str(headers["WWW-Authenticate"]).startswith("Basic ")
    token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    status, _, _ = _request(f"{auth_registry.url}/v2/", headers={"Authorization": f"Basic {token}"})
    assert status == 200


def test_auth_registry_refuses_anonymous_push(
    auth_registry: Registry, busybox_layout: ImageLayout
) -> None:
    anonymous = Registry(auth_registry.workdir)  # same policy file, no credentials
    anonymous.port = auth_registry.port
    with pytest.raises(RegistryError, match=r"(?i)unauthorized|authentication"):
        anonymous.push_layout(busybox_layout, busybox_layout.ref_name, "private/anon:1")


def test_start_stop(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with reg:
        assert reg.running
        status, _, _ = _request(f"{reg.url}/v2/")
        assert status == 200
        port = reg.port
    assert not reg.running
    with socket.socket() as s:  # the port is released again
        assert s.connect_ex(("127.0.0.1", port or 0)) != 0
    assert reg.host.startswith("127.0.0.1:")
