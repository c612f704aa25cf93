"""The CRI ImageService: pull, status by id/tag/digest, list, remove, fs info, users."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fixtures.images import busybox_image
from tests.fixtures.plugin import AUTH_PASSWORD, AUTH_USER
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.root


def _status(cri: Any, image: str) -> Any:
    return cri.images.ImageStatus(cri.pb.ImageStatusRequest(image=cri.pb.ImageSpec(image=image)))


def _push_user_image(registry: Registry, tmp_path: Path, user: str, tag: str) -> str:
    layout = busybox_image(tmp_path / f"layout-{tag}", user=user)
    return registry.push_layout(layout.path, layout.ref_name, f"cri/user:{tag}")


def test_pull_returns_the_image_id_that_status_by_id_tag_and_digest_agree_on(
        cri: Any, cri_image: str, registry: Registry) -> None:
    image_id = cri.pull(cri_image)
    assert image_id.startswith("sha256:")
    by_tag = _status(cri, cri_image).image
    assert by_tag.id == image_id
    assert by_tag.repo_tags == [cri_image]
    assert len(by_tag.repo_digests) == 1
    by_id = _status(cri, image_id).image
    by_digest = _status(cri, by_tag.repo_digests[0]).image
    assert by_id == by_tag == by_digest
    assert by_tag.size > 0


def test_pull_by_digest_gives_the_same_image(cri: Any, cri_image: str) -> None:
    image_id = cri.pull(cri_image)
    digest_ref = _status(cri, cri_image).image.repo_digests[0]
    assert cri.pull(digest_ref) == image_id


def test_image_status_of_an_unknown_image_is_empty_not_an_error(cri: Any) -> None:
    assert not _status(cri, "127.0.0.1:1/nothing/here:1").HasField("image")


def test_list_images_shows_one_image_with_every_tag(cri: Any, cri_image: str,
                                                   registry: Registry,
                                                   busybox_layout: Any) -> None:
    other = registry.push_layout(busybox_layout.path, busybox_layout.ref_name, "cri/busybox:2")
    first = cri.pull(cri_image)
    assert cri.pull(other) == first
    images = cri.images.ListImages(cri.pb.ListImagesRequest()).images
    assert [(i.id, sorted(i.repo_tags)) for i in images] == [(first, sorted([cri_image, other]))]
    filtered = cri.images.ListImages(cri.pb.ListImagesRequest(
        filter=cri.pb.ImageFilter(image=cri.pb.ImageSpec(image=other)))).images
    assert [i.id for i in filtered] == [first]


def test_remove_image_by_id_removes_every_tag_and_unknown_is_ok(
        cri: Any, cri_image: str, registry: Registry, busybox_layout: Any) -> None:
    pb = cri.pb
    other = registry.push_layout(busybox_layout.path, busybox_layout.ref_name, "cri/busybox:3")
    image_id = cri.pull(cri_image)
    cri.pull(other)

    def remove(ref: str) -> None:
        cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        list(pool.map(remove, [image_id] * 5))
    assert cri.images.ListImages(pb.ListImagesRequest()).images == []
    remove(image_id)
    remove("127.0.0.1:1/never/pulled:1")


def test_uid_and_username_come_from_the_image_user(cri: Any, registry: Registry,
                                                   tmp_path: Path) -> None:
    by_uid = _push_user_image(registry, tmp_path, "1002", "uid")
    by_name = _push_user_image(registry, tmp_path, "app:1004", "name")
    cri.pull(by_uid)
    cri.pull(by_name)
    uid_image = _status(cri, by_uid).image
    assert uid_image.uid.value == 1002 and uid_image.username == ""
    name_image = _status(cri, by_name).image
    assert not name_image.HasField("uid") and name_image.username == "app"


def test_pull_honours_the_call_deadline(cri: Any, cri_image: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cri.pull(cri_image, timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_pull_uses_the_credentials_in_the_request(cri: Any, auth_registry: Registry,
                                                  busybox_layout: Any) -> None:
    pb = cri.pb
    ref = auth_registry.push_layout(busybox_layout.path, busybox_layout.ref_name, "cri/auth:1")
    with pytest.raises(grpc.RpcError) as err:
        cri.pull(ref)
    assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                grpc.StatusCode.PERMISSION_DENIED)
    response = cri.images.PullImage(pb.PullImageRequest(
        image=pb.ImageSpec(image=ref),
        auth=pb.AuthConfig(username=AUTH_USER, password=AUTH_PASSWORD)))
    assert response.image_ref.startswith("sha256:")


def test_images_live_in_the_k8s_io_namespace(cri: Any, cri_daemon: Any, cri_image: str) -> None:
    cri.pull(cri_image)
    names = [i.name for i in cri_daemon.client("k8s.io").images()]
    assert names == [cri_image]
    assert cri_daemon.client("default").images() == []
    # And as the issue says it: `moorage -n k8s.io images ls`.
    import subprocess
    import sys

    listed = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "--address", cri_daemon.address,
         "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == [cri_image], listed.stderr


def test_image_fs_info_names_the_snapshotter_directory(cri: Any, cri_image: str) -> None:
    cri.pull(cri_image)
    info = cri.images.ImageFsInfo(cri.pb.ImageFsInfoRequest())
    assert len(info.image_filesystems) == 1
    usage = info.image_filesystems[0]
    assert usage.timestamp > 0
    assert Path(usage.fs_id.mountpoint).is_dir()
    assert usage.used_bytes.value > 0


def test_pull_of_an_invalid_reference_is_invalid_argument(cri: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cri.pull("UPPER/Case::bad")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _create(cri: Any, pod: tuple[str, Any], image: str) -> Any:
    """CreateContainer of ``image`` in ``pod``; its ContainerStatus."""
    container_id = cri.create_container(*pod, cri.container_config(image))
    return cri.runtime.ContainerStatus(
        cri.pb.ContainerStatusRequest(container_id=container_id)).status


def test_create_container_after_its_tag_moves_runs_the_image_the_tag_names_now(
        cri: Any, registry: Registry, tmp_path: Path) -> None:
    first = busybox_image(tmp_path / "first")
    second = busybox_image(tmp_path / "second", user="1002")
    ref = registry.push_layout(first.path, first.ref_name, "cri/moving:1")
    first_id = cri.pull(ref)
    pod = cri.run_pod()
    before = _create(cri, pod, ref)
    assert registry.push_layout(second.path, second.ref_name, "cri/moving:1") == ref
    second_id = cri.pull(ref)
    assert second_id != first_id
    after = _create(cri, pod, ref)
    assert (before.image_id, before.user.linux.uid) == (first_id, 0)
    assert (after.image_id, after.user.linux.uid) == (second_id, 1002)


def test_create_container_of_a_removed_image_is_not_found(cri: Any, cri_image: str) -> None:
    image_id = cri.pull(cri_image)
    pod = cri.run_pod()
    assert _create(cri, pod, cri_image).image_id == image_id
    cri.images.RemoveImage(cri.pb.RemoveImageRequest(image=cri.pb.ImageSpec(image=image_id)))
    with pytest.raises(grpc.RpcError) as caught:
        cri.create_container(*pod, cri.container_config(cri_image))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
