"""The pod cgroup parent: a pod's infra process and containers live under it (cgroupfs driver).

As containerd's CRI with the cgroupfs driver, the kubelet's
``LinuxPodSandboxConfig.cgroup_parent`` (``/kubepods/<qos>/pod<uid>``) holds
``<cgroup_parent>/<id>`` of the infra process and of every container of the
pod, in each cgroup v1 controller's hierarchy and in the v2 tree of a hybrid
host, and removing the pod never removes the pod cgroup itself (the kubelet's);
a pod without one gets ``<daemon cgroup_parent>/k8s.io/<id>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CRI_NAMESPACE
from tests.fixtures.daemon import CGROUP_ROOT, cgroup_dirs

pytestmark = pytest.mark.root

#: v1 controllers a container's resources are set in (each its own hierarchy here).
CONTROLLERS = ("memory", "cpu", "pids")


def _cgroups(pid: int) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path (``""`` is the v2 tree)."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            found[controller] = path
    return found


def _hierarchies(cgroup: str) -> set[str]:
    """The hierarchies (``memory``, ``cpu``, ``unified``...) in which ``cgroup`` exists."""
    return {d.relative_to(CGROUP_ROOT).parts[0] for d in cgroup_dirs(cgroup)}


def _pid(daemon: Any, id_: str) -> int:
    return int(daemon.client(CRI_NAMESPACE).task(id_).pid)


def test_the_pods_containers_live_under_its_cgroup_parent(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    parent = f"{cri_daemon.cgroup_parent}/kubepods/besteffort/pod-{cri.pod_config().metadata.uid}"
    config = cri.pod_config(cgroup_parent=parent)
    cri.pull(cri_image)
    sandbox_id, _ = cri.run_pod(config)
    container_id = cri.create_container(sandbox_id, config, cri.container_config(cri_image))
    cri.runtime.StartContainer(cri.pb.StartContainerRequest(container_id=container_id))
    for id_ in (sandbox_id, container_id):
        cgroups = _cgroups(_pid(cri_daemon, id_))
        for controller in CONTROLLERS:
            assert cgroups[controller] == f"{parent}/{id_}", (controller, cgroups)
        assert set(CONTROLLERS) <= _hierarchies(f"{parent}/{id_}")
        if (CGROUP_ROOT / "unified" / "cgroup.controllers").exists():
            assert cgroups[""] == f"{parent}/{id_}", cgroups  # the v2 tree too (hybrid)
    # Stats read the cgroup the container is in.
    stats = cri.runtime.ContainerStats(
        cri.pb.ContainerStatsRequest(container_id=container_id)).stats
    assert stats.memory.working_set_bytes.value > 0

    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    for id_ in (sandbox_id, container_id):
        assert cgroup_dirs(f"{parent}/{id_}") == []
    # The pod cgroup is the kubelet's: empty now, and still there (as containerd leaves it).
    # The daemon fixture removes it with its own cgroup parent.
    assert set(CONTROLLERS) <= _hierarchies(parent)


def test_a_pod_without_a_cgroup_parent_goes_under_the_daemons(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    sandbox_id, container_id = cri.run_container(cri_image)
    for id_ in (sandbox_id, container_id):
        assert _cgroups(_pid(cri_daemon, id_))["memory"] == \
            f"{cri_daemon.cgroup_parent}/{CRI_NAMESPACE}/{id_}"


@pytest.mark.parametrize("parent", ["kubepods.slice", "/kubepods/../escape"])
def test_a_cgroup_parent_that_is_not_an_absolute_cgroupfs_path_is_invalid(
        cri: Any, parent: str) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        cri.run_pod(cri.pod_config(cgroup_parent=parent))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not cri.runtime.ListPodSandbox(cri.pb.ListPodSandboxRequest()).items
