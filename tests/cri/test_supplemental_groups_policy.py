"""SupplementalGroupsPolicy (critest's "SupplementalGroupsPolicy Merge / Strict").

The busybox image's ``/etc/passwd`` has ``app`` (1000, primary group 1000) and its
``/etc/group`` lists ``app`` in ``users`` (100). Merge (the default) adds that
membership to the groups the request asks for; Strict keeps only the primary group
and the request's. ContainerStatus reports the groups the process runs with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

_UID = 1000
_IMAGE_GROUP = 100  # users, which lists app in the image's /etc/group
_ASKED = 1234


def _run_as_app(cri: Any, image: str, policy: int | None) -> tuple[str, Path]:
    pb = cri.pb
    config = cri.container_config(image, ["sh", "-c", "id -G; sleep 3600"])
    sec = config.linux.security_context
    sec.run_as_user.value = _UID
    sec.supplemental_groups.append(_ASKED)
    if policy is not None:
        sec.supplemental_groups_policy = policy  # type: ignore[assignment]
    cri.pull(image)
    sandbox_id, sandbox_config = cri.run_pod()
    container_id = cri.create_container(sandbox_id, sandbox_config, config)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    return container_id, Path(sandbox_config.log_directory) / config.log_path


def _user(cri: Any, container_id: str) -> tuple[int, int, list[int]]:
    status = cri.runtime.ContainerStatus(
        cri.pb.ContainerStatusRequest(container_id=container_id)).status
    linux = status.user.linux
    return linux.uid, linux.gid, sorted(linux.supplemental_groups)


def _logged_groups(log: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().strip():
            return log.read_text().split(" ", 3)[3].rstrip("\n")
        time.sleep(0.1)
    raise AssertionError(f"nothing logged in {log}")


def test_status_advertises_the_supplemental_groups_policy_feature(cri: Any) -> None:
    status = cri.runtime.Status(cri.pb.StatusRequest())
    assert status.features.supplemental_groups_policy


@pytest.mark.parametrize("policy", [None, 0], ids=["unset", "Merge"])
def test_merge_policy_adds_the_images_groups_of_the_user(
        cri: Any, cri_image: str, policy: int | None) -> None:
    container_id, log = _run_as_app(cri, cri_image, policy)
    expected = f"{_UID} {_IMAGE_GROUP} {_ASKED}"
    assert _logged_groups(log) == expected
    assert cri.exec(container_id, "id", "-G").stdout.decode() == expected + "\n"
    assert _user(cri, container_id) == (_UID, _UID, sorted([_UID, _IMAGE_GROUP, _ASKED]))


def test_strict_policy_leaves_out_the_images_groups(cri: Any, cri_image: str) -> None:
    container_id, log = _run_as_app(cri, cri_image, cri.pb.Strict)
    expected = f"{_UID} {_ASKED}"
    assert _logged_groups(log) == expected
    assert cri.exec(container_id, "id", "-G").stdout.decode() == expected + "\n"
    assert _user(cri, container_id) == (_UID, _UID, [_UID, _ASKED])


def test_strict_policy_of_the_pod_applies_to_its_containers(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    config = cri.container_config(cri_image)
    config.linux.security_context.run_as_user.value = _UID
    cri.pull(cri_image)
    pod_config = cri.pod_config()
    pod_config.linux.security_context.supplemental_groups_policy = pb.Strict
    sandbox_id, _ = cri.run_pod(pod_config)
    container_id = cri.create_container(sandbox_id, pod_config, config)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    assert cri.exec(container_id, "id", "-G").stdout == f"{_UID}\n".encode()
    assert _user(cri, container_id) == (_UID, _UID, [_UID])
