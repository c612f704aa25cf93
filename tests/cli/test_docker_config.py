"""The caller's Docker config.json as the CLI reads and writes it (no daemon needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from runtime.cli.docker_config import DOCKER_HUB_KEY, DockerConfig, credentials_for
from runtime.core.errors import InvalidArgument, Unavailable


def config(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_auths_entries_are_found_by_host_whatever_the_key_spelling(tmp_path: Path) -> None:
    auth = base64.b64encode(b"u:p:with:colons").decode()
    path = config(tmp_path, {"auths": {
        "https://registry.example:5000/v1/": {"auth": auth},
        DOCKER_HUB_KEY: {"identitytoken": "tok"},
        "plain.example": {"username": "a", "password": "b"}}})
    found = DockerConfig(path)
    assert found.get("registry.example:5000") == ("u", "p:with:colons")
    assert found.get("docker.io") == ("", "tok")
    assert found.get("index.docker.io") == ("", "tok")
    assert found.get("plain.example") == ("a", "b")
    assert found.get("elsewhere.example") is None


def test_store_and_erase_write_the_file_keeping_other_keys(tmp_path: Path) -> None:
    path = config(tmp_path, {"auths": {}, "detachKeys": "ctrl-q"})
    DockerConfig(path).store("docker.io", "me", "pw")
    doc = json.loads(path.read_text())
    assert doc["detachKeys"] == "ctrl-q"
    assert base64.b64decode(doc["auths"][DOCKER_HUB_KEY]["auth"]) == b"me:pw"
    assert DockerConfig(path).erase("docker.io") is True
    assert json.loads(path.read_text())["auths"] == {}
    assert DockerConfig(path).erase("docker.io") is False


@pytest.mark.parametrize("doc", [[], {"auths": []}, "text"])
def test_a_config_that_is_no_object_is_refused_naming_the_file(tmp_path: Path,
                                                               doc: object) -> None:
    path = config(tmp_path, doc)
    with pytest.raises(InvalidArgument, match=str(path)):
        DockerConfig(path)


def test_a_bad_auth_value_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, {"auths": {"h.example": {"auth": "%%%"}}})
    with pytest.raises(InvalidArgument, match="not base64"):
        DockerConfig(path).get("h.example")


def test_helper_errors_other_than_not_found_are_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "docker-credential-broken"
    helper.write_text("#!/bin/sh\necho 'keychain locked' >&2\nexit 3\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    config(tmp_path, {"credsStore": "broken"})
    with pytest.raises(Unavailable, match="keychain locked"):
        credentials_for("h.example/repo:1")
    config(tmp_path, {})
    assert credentials_for("h.example/repo:1") == ("", "")
