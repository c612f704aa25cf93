"""User namespaces of pods (critest's "UserNamespaces" specs, and what containerd refuses).

A pod asks for one with ``NamespaceOption.userns_options`` mode ``POD`` and one
UID and one GID mapping; its infra process (if any) and every container run in
it, their root filesystems idmapped through it, and its network, IPC and UTS
namespaces are owned by it. Mode ``NODE`` is the host's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import connected, restart_cri_daemon, running_cri_daemon

pytestmark = pytest.mark.root

_MAP = (0, 1000, 100000)




def _userns(pb: Any, mode: int, mappings: list[tuple[int, int, int]] | None = None,
            **modes: int) -> Any:
    ids = [pb.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in mappings or []]
    return pb.NamespaceOption(userns_options=pb.UserNamespace(mode=mode, uids=ids, gids=ids),
                              **modes)


def _pod(cri: Any, options: Any) -> tuple[str, Any]:
    config = cri.pod_config()
    config.linux.security_context.namespace_options.CopyFrom(options)
    return cri.run_pod(config)


def _run(cri: Any, image: str, pod: tuple[str, Any], command: list[str]) -> str:
    """Start ``command`` in the pod (the pod's namespace options given again, as critest does)."""
    pb = cri.pb
    config = cri.container_config(image, command)
    config.linux.security_context.namespace_options.CopyFrom(
        pod[1].linux.security_context.namespace_options)
    container_id = cri.create_container(pod[0], pod[1], config)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    return container_id


def _log(cri: Any, pod: tuple[str, Any], container_id: str) -> str:
    status = cri.runtime.ContainerStatus(cri.pb.ContainerStatusRequest(
        container_id=container_id)).status
    path = Path(status.log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = cri.runtime.ContainerStatus(cri.pb.ContainerStatusRequest(
            container_id=container_id)).status
        if status.state == cri.pb.CONTAINER_EXITED and path.exists():
            return "".join(line.split(" ", 3)[3] for line in path.read_text().splitlines(True))
        time.sleep(0.1)
    raise AssertionError(f"container {container_id} did not exit: {status}")


def _pid(cri: Any, container_id: str) -> int:
    info = cri.runtime.ContainerStatus(cri.pb.ContainerStatusRequest(
        container_id=container_id, verbose=True)).info["info"]
    return int(json.loads(info)["pid"])


def _uid_map(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def test_status_advertises_user_namespaces_for_runc(cri: Any) -> None:
    handlers = {h.name: h.features.user_namespaces
                for h in cri.runtime.Status(cri.pb.StatusRequest()).runtime_handlers}
    assert handlers[""] and handlers["runc"]


@pytest.mark.parametrize("pid", ["POD", "CONTAINER"])
def test_a_pod_user_namespace_maps_its_containers_root(cri: Any, cri_image: str,
                                                       pid: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    pod = _pod(cri, _userns(pb, pb.POD, [_MAP], pid=getattr(pb, pid)))
    container_id = _run(cri, cri_image, pod, [
        "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin/sh; "
        "touch /made-by-root && stat -c %u /made-by-root; ls /sys/class/net"])
    out = _log(cri, pod, container_id).splitlines()
    assert _uid_map("\n".join(out[:2])) == [["0", "1000", "100000"]] * 2
    # Root inside, and the image's root-owned files are root's there (idmapped rootfs).
    assert out[2:5] == ["0", "0:0", "0"]
    # sysfs of the pod's own network namespace (owned by the user namespace).
    assert "eth0" in out[5:]
    status = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=container_id)).status
    assert status.exit_code == 0
    # The host sees the container's processes as the mapped ids: a long-running one.
    sleeper = _run(cri, cri_image, pod, ["sleep", "3600"])
    task_pid = _pid(cri, sleeper)
    assert os.stat(f"/proc/{task_pid}").st_uid == 1000
    assert Path(f"/proc/{task_pid}/uid_map").read_text().split() == ["0", "1000", "100000"]


def test_every_container_of_a_pod_shares_its_user_and_network_namespaces(
        cri: Any, cri_image: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    pod = _pod(cri, _userns(pb, pb.POD, [_MAP], pid=pb.CONTAINER))
    first, second = (_run(cri, cri_image, pod, ["sleep", "3600"]) for _ in range(2))
    pids = [_pid(cri, c) for c in (first, second)]
    for kind in ("user", "net", "ipc", "uts"):
        assert os.stat(f"/proc/{pids[0]}/ns/{kind}").st_ino == \
            os.stat(f"/proc/{pids[1]}/ns/{kind}").st_ino, kind
    assert os.stat(f"/proc/{pids[0]}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    hostname = cri.exec(first, "hostname").stdout.decode().strip()
    assert hostname == (pod[1].hostname or os.uname().nodename)


def test_mode_node_is_the_hosts_user_namespace(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    pod = _pod(cri, _userns(pb, pb.NODE))
    container_id = _run(cri, cri_image, pod, ["cat", "/proc/self/uid_map"])
    assert _uid_map(_log(cri, pod, container_id)) == _uid_map(
        Path("/proc/self/uid_map").read_text())


@pytest.mark.parametrize(("mode", "mappings", "modes", "message"), [
    ("POD", [(0, 1000, 100000), (0, 2000, 100000)], {}, "only one mapping line"),
    ("POD", [(1, 1000, 100000)], {}, "must map container id 0"),
    ("POD", [(0, 1000, 0)], {}, "invalid length"),
    ("POD", [], {}, "needs a UID and a GID mapping"),
    ("NODE", [(0, 1000, 100000)], {}, "cannot have mappings"),
    ("CONTAINER", [], {}, "not supported"),
    ("TARGET", [], {}, "not supported"),
    ("POD", [(0, 1000, 100000)], {"network": "NODE"}, "host's network"),
    ("POD", [(0, 1000, 100000)], {"pid": "NODE"}, "host's PID"),
    ("POD", [(0, 1000, 100000)], {"ipc": "NODE"}, "host's IPC"),
], ids=["two-mappings", "root-unmapped", "zero-length", "no-mappings", "node-with-mappings",
        "container", "target", "host-network", "host-pid", "host-ipc"])
def test_invalid_user_namespace_options_are_invalid_argument_and_make_nothing(
        cri: Any, mode: str, mappings: list[tuple[int, int, int]], modes: dict[str, str],
        message: str) -> None:
    pb = cri.pb
    options = _userns(pb, getattr(pb, mode), mappings,
                      **{k: getattr(pb, v) for k, v in modes.items()})
    with pytest.raises(grpc.RpcError) as err:
        _pod(cri, options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items


def test_a_container_asking_for_another_user_namespace_than_its_pods_is_refused(
        cri: Any, cri_image: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    pod = _pod(cri, _userns(pb, pb.POD, [_MAP]))
    config = cri.container_config(cri_image)
    config.linux.security_context.namespace_options.CopyFrom(
        _userns(pb, pb.POD, [(0, 5000, 100000)]))
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container(pod[0], pod[1], config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not cri.runtime.ListContainers(pb.ListContainersRequest()).containers


def _mounts_of(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if text in line]


@pytest.mark.parametrize("pid", ["POD", "CONTAINER"])
def test_removing_the_pod_leaves_no_namespace_pin_mount_or_netns(
        cri_daemon: Any, cri: Any, cri_image: str, pid: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    sandbox_id, config = _pod(cri, _userns(pb, pb.POD, [_MAP], pid=getattr(pb, pid)))
    container_id = _run(cri, cri_image, (sandbox_id, config), ["sleep", "3600"])
    netns_dir = cri_daemon.state / "network.cni" / "netns"
    # The pod's user, IPC and UTS namespaces are pinned; its netns is network.cni's.
    pins = sorted(line.split()[4].rsplit("/", 1)[1] for line in _mounts_of(sandbox_id)
                  if f"sandboxes/{sandbox_id}/ns/" in line)
    assert pins == ["ipc", "user", "uts"]  # ns/net was network.cni's to adopt, and is gone
    assert [p.name for p in netns_dir.iterdir() if sandbox_id in p.name]
    assert _mounts_of(container_id)
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert not [p.name for p in netns_dir.iterdir() if sandbox_id in p.name]
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert not _mounts_of(sandbox_id)
    assert not _mounts_of(container_id)


def test_user_namespaces_are_not_advertised_and_refused_when_the_state_is_private(
        tmp_path: Path) -> None:
    with running_cri_daemon(tmp_path / "daemon") as daemon:
        daemon.state.chmod(0o700)  # before the first call: the feature is probed then
        with connected(daemon, tmp_path / "logs") as cri:
            pb = cri.pb
            handlers = cri.runtime.Status(pb.StatusRequest()).runtime_handlers
            assert not any(h.features.user_namespaces for h in handlers)
            with pytest.raises(grpc.RpcError) as err:
                _pod(cri, _userns(pb, pb.POD, [_MAP]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "does not support user namespaces" in err.value.details()
            # NODE is the host's: nothing to support.
            sandbox_id, _ = _pod(cri, _userns(pb, pb.NODE))
            assert sandbox_id


@pytest.mark.parametrize("pid", ["POD", "CONTAINER"])
def test_the_pods_hostname_and_sysctls_are_set_in_its_own_namespaces(
        cri: Any, cri_image: str, pid: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    config = cri.pod_config(hostname="userns-pod")
    config.linux.security_context.namespace_options.CopyFrom(
        _userns(pb, pb.POD, [_MAP], pid=getattr(pb, pid)))
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    pod = cri.run_pod(config)
    container_id = _run(cri, cri_image, pod, ["sleep", "3600"])
    assert cri.exec(container_id, "hostname").stdout == b"userns-pod\n"
    for key, value in (("kernel/shm_rmid_forced", b"1\n"),
                       ("net/ipv4/ip_unprivileged_port_start", b"0\n")):
        assert cri.exec(container_id, "cat", f"/proc/sys/{key}").stdout == value


def test_host_path_mounts_and_the_pods_files_are_reachable_but_not_idmapped(
        cri: Any, cri_image: str, tmp_path: Path) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "data").write_text("from the host\n")
    tmp_path.chmod(0o755)
    pod = _pod(cri, _userns(pb, pb.POD, [_MAP]))
    config = cri.container_config(cri_image, ["sleep", "3600"])
    config.linux.security_context.namespace_options.CopyFrom(
        pod[1].linux.security_context.namespace_options)
    config.mounts.add(container_path="/shared", host_path=str(host_dir), readonly=True)
    container_id = cri.create_container(pod[0], pod[1], config)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    assert cri.exec(container_id, "cat", "/shared/data").stdout == b"from the host\n"
    # Host root is unmapped inside: only the root filesystem is idmapped (runc 1.1).
    assert cri.exec(container_id, "stat", "-c", "%u", "/shared/data").stdout == b"65534\n"
    assert cri.exec(container_id, "cat", "/etc/hostname").exit_code == 0
    assert cri.exec(container_id, "sh", "-c", "echo x > /dev/shm/f && cat /dev/shm/f"
                    ).stdout == b"x\n"


@pytest.mark.parametrize("pid", ["POD", "CONTAINER"])
def test_a_user_namespace_pod_keeps_running_across_a_daemon_restart(
        cri: Any, cri_daemon: Any, cri_image: str, pid: str) -> None:

    pb = cri.pb
    cri.pull(cri_image)
    pod = _pod(cri, _userns(pb, pb.POD, [_MAP], pid=getattr(pb, pid)))
    first = _run(cri, cri_image, pod, ["sleep", "3600"])
    restart_cri_daemon(cri_daemon)
    sandboxes = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [(s.id, s.state) for s in sandboxes] == [(pod[0], pb.SANDBOX_READY)]
    # A container made after the restart joins the same user namespace.
    second = _run(cri, cri_image, pod, ["sleep", "3600"])
    pids = [_pid(cri, c) for c in (first, second)]
    assert os.stat(f"/proc/{pids[0]}/ns/user").st_ino == os.stat(f"/proc/{pids[1]}/ns/user").st_ino
    assert cri.exec(second, "cat", "/proc/self/uid_map").stdout.split() == [b"0", b"1000",
                                                                            b"100000"]
