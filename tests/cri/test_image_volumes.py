"""Image volumes: a CRI ``Mount`` naming an image mounts its root filesystem read-only.

critest's five Image Volume specs, each as a test here (the image is the
busybox-static one, pulled first as the kubelet does), plus what critest does
not check: a missing image, a sub path climbing out of the image, the views
kept through a daemon restart and released with the container, nothing left
mounted on the host, and ImageFsInfo/ListImages unchanged by them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CRI_NAMESPACE, restart_cri_daemon
from tests.fixtures.images import LayerBuilder, build_image, busybox_layer, host_platform
from tests.fixtures.registry import Registry
from tests.reliability.store_check import mounts_under

pytestmark = pytest.mark.root

VOLUME = "/mnt/image-volume"


def _volume_config(cri: Any, image: str, image_ref: str, *, readonly: bool = True,
                   sub_path: str = "") -> Any:
    config = cri.container_config(image)
    config.image.user_specified_image = image
    config.mounts.add(container_path=VOLUME, readonly=readonly, image_sub_path=sub_path,
                      image=cri.pb.ImageSpec(image=image_ref, user_specified_image=image))
    return config


def _create(cri: Any, config: Any) -> str:
    sandbox_id, sandbox_config = cri.run_pod()
    return cri.create_container(sandbox_id, sandbox_config, config)  # type: ignore[no-any-return]


def _start(cri: Any, config: Any) -> str:
    container_id = _create(cri, config)
    cri.runtime.StartContainer(cri.pb.StartContainerRequest(container_id=container_id))
    return container_id


def _create_error(cri: Any, config: Any) -> grpc.RpcError:
    sandbox_id, sandbox_config = cri.run_pod()
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container(sandbox_id, sandbox_config, config)
    containers = cri.runtime.ListContainers(cri.pb.ListContainersRequest()).containers
    assert list(containers) == [], "a refused create left a container"
    return err.value


def _views(daemon: Any) -> set[str]:
    client = daemon.client(CRI_NAMESPACE)
    return {s.name for s in client.snapshots("overlayfs") if "image-volume" in s.name}


def _host_mounts(daemon: Any) -> list[str]:
    return [m for m in mounts_under(daemon.root, daemon.state) if "image-volumes" in m]


def test_an_image_volume_reports_the_image_id_in_status_mounts(cri: Any,
                                                               cri_image: str) -> None:
    """critest: should return image digest in ContainerStatus mounts (image_ref, tag 20)."""
    image_ref = cri.pull(cri_image)
    container_id = _create(cri, _volume_config(cri, cri_image, image_ref))
    status = cri.runtime.ContainerStatus(
        cri.pb.ContainerStatusRequest(container_id=container_id)).status
    [mount] = [m for m in status.mounts if m.container_path == VOLUME]
    assert mount.image.image_ref == image_ref
    assert mount.readonly


def test_an_image_volume_shows_the_image_read_only_and_executable(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    """critest: should correctly mount image and enforce read-only (and not noexec)."""
    image_ref = cri.pull(cri_image)
    container_id = _start(cri, _volume_config(cri, cri_image, image_ref))
    assert cri.exec(container_id, "ls", "-A", f"{VOLUME}/bin/sh").exit_code == 0
    write = cri.exec(container_id, "touch", f"{VOLUME}/test-write")
    assert write.exit_code != 0
    assert b"Read-only file system" in write.stderr
    assert cri.exec(container_id, f"{VOLUME}/bin/busybox", "ls", VOLUME).exit_code == 0
    assert cri.exec(container_id, f"{VOLUME}/bin/ls", VOLUME).exit_code == 0
    assert cri.exec(container_id, "cat", f"{VOLUME}/etc/hostname").stdout == b"moorage\n"
    # Only the task holds it: nothing stays mounted on the host after the create.
    assert _host_mounts(cri_daemon) == []


def test_an_image_volume_that_is_not_read_only_is_invalid_argument(cri: Any,
                                                                   cri_image: str) -> None:
    """critest: should reject Image Volume with Readonly set to false."""
    image_ref = cri.pull(cri_image)
    error = _create_error(cri, _volume_config(cri, cri_image, image_ref, readonly=False))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "read-only" in (error.details() or "")


def test_an_image_volume_sub_path_mounts_that_directory(cri: Any, cri_image: str) -> None:
    """critest: subPath should succeed when using a valid subPath (``etc``)."""
    image_ref = cri.pull(cri_image)
    container_id = _start(cri, _volume_config(cri, cri_image, image_ref, sub_path="etc"))
    assert cri.exec(container_id, "ls", VOLUME).exit_code == 0
    assert cri.exec(container_id, "ls", f"{VOLUME}/etc/passwd").exit_code != 0
    assert cri.exec(container_id, "ls", f"{VOLUME}/passwd").exit_code == 0
    assert cri.exec(container_id, "touch", f"{VOLUME}/new").exit_code != 0


@pytest.mark.parametrize("sub_path", ["not-existing", "etc/passwd", "../../../etc"],
                         ids=["missing", "a-file", "climbing-out"])
def test_an_image_volume_sub_path_that_is_no_directory_of_the_image_is_refused(
        cri: Any, cri_daemon: Any, cri_image: str, sub_path: str) -> None:
    """critest: subPath should fail when subPath does not exist in the image; a file, or a
    path above the image's root, is refused too; the view made for it is removed."""
    image_ref = cri.pull(cri_image)
    error = _create_error(cri, _volume_config(cri, cri_image, image_ref, sub_path=sub_path))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sub_path in (error.details() or "")
    assert _views(cri_daemon) == set()
    assert _host_mounts(cri_daemon) == []


def test_an_image_volume_of_an_image_not_present_is_not_found(cri: Any, cri_image: str,
                                                              cri_daemon: Any) -> None:
    """The kubelet pulls the image first: one that is not here is a clear NOT_FOUND."""
    cri.pull(cri_image)
    missing = cri_image.rsplit(":", 1)[0] + ":not-pulled"
    error = _create_error(cri, _volume_config(cri, cri_image, missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "not-pulled" in (error.details() or "")
    assert "pull it first" in (error.details() or "")
    assert _views(cri_daemon) == set()


def test_an_image_volume_survives_a_restart_and_is_released_with_its_container(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    """The view outlives a daemon restart with its container, and goes with RemoveContainer;
    ImageFsInfo and ListImages do not count it."""
    pb = cri.pb
    image_ref = cri.pull(cri_image)
    images_before = cri.images.ListImages(pb.ListImagesRequest()).images
    container_id = _start(cri, _volume_config(cri, cri_image, image_ref))
    assert _views(cri_daemon) == {f"{container_id}-image-volume-0"}
    restart_cri_daemon(cri_daemon)
    assert _views(cri_daemon) == {f"{container_id}-image-volume-0"}
    assert cri.exec(container_id, "cat", f"{VOLUME}/etc/hostname").stdout == b"moorage\n"
    assert cri.images.ListImages(pb.ListImagesRequest()).images == images_before
    filesystems = cri.images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems
    assert [f.used_bytes.value for f in filesystems] == [sum(i.size for i in images_before)]
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
    assert _views(cri_daemon) == set()
    assert _host_mounts(cri_daemon) == []
    assert not Path(cri_daemon.state, "cri.v1", "image-volumes", container_id).exists()
    # The image is still there, and may go now that nothing uses it.
    assert cri.images.ListImages(pb.ListImagesRequest()).images == images_before


def test_two_image_volumes_of_one_container_each_get_a_view(cri: Any, cri_daemon: Any,
                                                            cri_image: str) -> None:
    """Two mounts of the same image (one with a sub path): two views, both released."""
    image_ref = cri.pull(cri_image)
    config = _volume_config(cri, cri_image, image_ref)
    config.mounts.add(container_path="/etc-of-image", readonly=True, image_sub_path="etc",
                      image=cri.pb.ImageSpec(image=image_ref))
    container_id = _start(cri, config)
    assert cri.exec(container_id, "cat", "/etc-of-image/hostname").stdout == b"moorage\n"
    assert cri.exec(container_id, "ls", f"{VOLUME}/bin/busybox").exit_code == 0
    assert _views(cri_daemon) == {f"{container_id}-image-volume-{i}" for i in (0, 1)}
    cri.remove_everything()
    assert _views(cri_daemon) == set()


@pytest.fixture(scope="module")
def layered_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two layers: the upper one deletes ``/etc/hostname`` and adds ``/data/real/file`` and
    ``/link``, a symlink climbing out of the root towards ``/data/real``."""
    layout = tmp_path_factory.mktemp("image-volume-layers") / "layout"
    upper = (LayerBuilder(implicit_parents=True)
             .whiteout("etc/hostname")
             .file("data/real/file", "from the image\n")
             .symlink("link", "../../../../../data/real"))
    build_image(layout, (busybox_layer(), upper), platform=host_platform(), ref_name="layers",
                cmd=["sh"])
    return registry.push_layout(layout, "layers", "cri/image-volume-layers:1")


def test_an_image_volume_of_a_layered_image_shows_its_merged_tree(
        cri: Any, cri_image: str, layered_image: str) -> None:
    """An image of several layers is seen merged, whiteouts applied, as its containers see it;
    a sub path through a symlink is resolved inside the image, never on the host."""
    cri.pull(cri_image)
    image_ref = cri.pull(layered_image)
    config = _volume_config(cri, cri_image, image_ref)
    config.mounts.add(container_path="/linked", readonly=True, image_sub_path="link",
                      image=cri.pb.ImageSpec(image=layered_image))
    container_id = _start(cri, config)
    assert cri.exec(container_id, "ls", f"{VOLUME}/bin/busybox").exit_code == 0
    assert cri.exec(container_id, "ls", f"{VOLUME}/etc/hostname").exit_code != 0
    assert cri.exec(container_id, "cat", f"{VOLUME}/data/real/file").stdout == \
        b"from the image\n"
    assert cri.exec(container_id, "cat", "/linked/file").stdout == b"from the image\n"
    assert cri.exec(container_id, "touch", f"{VOLUME}/data/real/new").exit_code != 0



def test_the_garbage_collector_keeps_an_image_volume_while_its_container_exists(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    """The container's record refers to its views (a gc.ref.snapshot label): a collection
    keeps them; once the record is gone without RemoveContainer, the next one takes them."""
    image_ref = cri.pull(cri_image)
    container_id = _start(cri, _volume_config(cri, cri_image, image_ref))
    client = cri_daemon.client(CRI_NAMESPACE)
    client.gc()
    assert _views(cri_daemon) == {f"{container_id}-image-volume-0"}
    assert cri.exec(container_id, "ls", f"{VOLUME}/bin/busybox").exit_code == 0
    # Behind the CRI's back: the record and its task, not the views.
    client.remove(container_id, force=True, snapshot=True)
    client.gc()
    assert _views(cri_daemon) == set()
