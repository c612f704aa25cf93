"""PullImage through registry mirrors from the images service's hosts directory.

A kubelet asks for ``registry.k8s.io/...`` or ``docker.io/...`` images; on a
host that cannot reach them, the operator maps those domains to a mirror in
``<hosts_dir>/<domain>/hosts.toml`` (containerd's format), as the ``images.store``
plugin reads it. Here the mirror is the loopback test registry, and the
upstream servers (unreachable from this machine) are never needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cri.conftest import CRI_IMAGE_TAG, CriClient, connected, cri_config, running_cri_daemon
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.root


@pytest.fixture
def hosts_dir(tmp_path: Path, registry: Registry) -> Path:
    """registry.k8s.io and docker.io mirrored by the loopback registry."""
    base = tmp_path / "certs.d"
    for domain, upstream in (("registry.k8s.io", "https://registry.k8s.io"),
                             ("docker.io", "https://registry-1.docker.io")):
        (base / domain).mkdir(parents=True)
        (base / domain / "hosts.toml").write_text(
            f'server = "{upstream}"\n\n[host."{registry.url}"]\n'
            'capabilities = ["pull", "resolve"]\n')
    return base


@pytest.fixture
def cri(tmp_path: Path, hosts_dir: Path) -> Iterator[CriClient]:
    config = cri_config() + f'\n[plugins."images.store"]\nhosts_dir = "{hosts_dir}"\n'
    with running_cri_daemon(tmp_path / "daemon", config) as daemon, \
            connected(daemon, tmp_path / "logs") as client:
        yield client


@pytest.mark.parametrize(("asked", "named"), [
    (f"registry.k8s.io/{CRI_IMAGE_TAG}", f"registry.k8s.io/{CRI_IMAGE_TAG}"),
    (CRI_IMAGE_TAG, f"docker.io/{CRI_IMAGE_TAG}"),
])
def test_pull_image_goes_through_the_mirror_of_the_hosts_dir(
        cri: CriClient, cri_image: str, asked: str, named: str) -> None:
    image_ref = cri.pull(asked)
    pb = cri.pb
    status = cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=asked)))
    assert status.image.id == image_ref
    assert named in status.image.repo_tags
    # The mirrored image runs like any other.
    _, container_id = cri.run_container(asked, ("sh", "-c", "sleep 3600"))
    assert cri.exec(container_id, "echo", "mirrored").stdout == b"mirrored\n"
    listed = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [(c.image.image, c.image_ref) for c in listed] == [(asked, image_ref)]
