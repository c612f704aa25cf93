"""The store check (tests/reliability/store_check.py) knows what a CRI pod owns.

A pod sandbox the CRI has a record of owns its ``/dev/shm`` tmpfs and, until
it is stopped, its network namespace's bind mount; any other mount under the daemon's root or state,
also one shaped like a pod's, stays stray. The crash suite
(test_crash_consistency.py) relies on this to check a store holding live pods.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cri.conftest import CRI_NAMESPACE
from tests.reliability.store_check import CRI_EXTENSION, check_store, mounts_under

pytestmark = pytest.mark.root


def test_a_pods_netns_and_shm_are_its_own_and_a_forgotten_pods_are_stray(
        cri: Any, cri_daemon: Any) -> None:
    sandbox_id, _ = cri.run_pod()
    ext = cri_daemon.client(CRI_NAMESPACE).container(sandbox_id).extensions[CRI_EXTENSION]
    netns, shm = ext["netns"], str(Path(ext["dir"]) / "shm")
    assert {netns, shm} <= set(mounts_under(cri_daemon.root, cri_daemon.state))
    assert check_store(cri_daemon).problems == []

    # A pod directory no record names: its /dev/shm is nobody's.
    forgotten = Path(ext["dir"]).parent / ("0" * 64) / "shm"
    forgotten.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "shm", str(forgotten)], check=True)
    try:
        assert check_store(cri_daemon).problems == [f"stray mount {forgotten}"]
    finally:
        subprocess.run(["umount", str(forgotten)], check=True)
        forgotten.rmdir()
        forgotten.parent.rmdir()
    assert check_store(cri_daemon).problems == []

    # Stopped: the netns is gone (a stopped pod's would be stray); /dev/shm stays until removed.
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    left = set(mounts_under(cri_daemon.root, cri_daemon.state))
    assert netns not in left and shm in left
    assert check_store(cri_daemon).problems == []
    cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shm not in mounts_under(cri_daemon.root, cri_daemon.state)
    assert check_store(cri_daemon).problems == []
