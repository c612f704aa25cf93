"""What critest (cri-tools' pkg/validate) asserts, where tests/cri did not assert it yet.

Each test names the critest spec it stands for (see the parity table in
docs/cri.md). critest's own images (busybox:1.29, nginx, test-image-*) are not
reachable here: the tests use the local busybox-static image, whose shell runs
applets without a ``/bin`` link (so ``sh -c 'brctl ...'`` works).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fixtures.images import busybox_image
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.root

_MS_BIND, _MS_REC, _MS_PRIVATE, _MS_SHARED, _MNT_DETACH = 4096, 16384, 1 << 18, 1 << 20, 2


def _mount(source: str, target: str, fstype: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                  flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} {target}")


def _umount(target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(target.encode(), _MNT_DETACH)


def _status(cri: Any, container_id: str) -> Any:
    return cri.runtime.ContainerStatus(
        cri.pb.ContainerStatusRequest(container_id=container_id)).status


def _wait_exited(cri: Any, container_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(cri, container_id)
        if status.state == cri.pb.CONTAINER_EXITED or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _log_entries(path: str) -> list[tuple[str, str]]:
    """(stream, message) of every line of a CRI log file."""
    lines = Path(path).read_text().splitlines()
    return [(parts[1], parts[3] if len(parts) > 3 else "")
            for parts in (line.split(" ", 3) for line in lines)]


def _image_status(cri: Any, image: str) -> Any:
    response = cri.images.ImageStatus(
        cri.pb.ImageStatusRequest(image=cri.pb.ImageSpec(image=image)))
    return response.image if response.HasField("image") else None


def _remove_image(cri: Any, image: str) -> None:
    cri.images.RemoveImage(cri.pb.RemoveImageRequest(image=cri.pb.ImageSpec(image=image)))


def _start(cri: Any, sandbox: tuple[str, Any], config: Any) -> str:
    container_id = cri.create_container(sandbox[0], sandbox[1], config)
    cri.runtime.StartContainer(cri.pb.StartContainerRequest(container_id=container_id))
    return container_id


def _privileged_pod(cri: Any) -> tuple[str, Any]:
    config = cri.pod_config()
    config.linux.security_context.privileged = True
    return cri.run_pod(config)  # type: ignore[no-any-return]


# -- RuntimeService: pods and containers --------------------------------------------


def test_pod_attributes_are_preserved_in_status_and_list(cri: Any) -> None:
    """critest: runtime should support preserving PodSandbox attributes."""
    config = cri.pod_config(labels={"foo": "bar", "io.kubernetes.pod.name": "p"})
    config.metadata.attempt = 2
    config.annotations["abc"] = "def"
    sandbox_id, _ = cri.run_pod(config)
    status = cri.runtime.PodSandboxStatus(
        cri.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
    listed = cri.runtime.ListPodSandbox(cri.pb.ListPodSandboxRequest(
        filter=cri.pb.PodSandboxFilter(id=sandbox_id))).items
    assert len(listed) == 1
    for item in (status, listed[0]):
        assert item.metadata == config.metadata
        assert dict(item.labels) == dict(config.labels)
        assert dict(item.annotations) == {"abc": "def"}


def test_critest_shaped_names_run_a_pod_and_a_container(cri: Any, cri_image: str) -> None:
    """critest's own metadata: upper case, 60+ characters, attempt 2, no log directory."""
    pb = cri.pb
    cri.pull(cri_image)
    suffix = str(uuid.uuid4())
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
        name="create-PodSandbox-for-container-" + suffix, uid="cri-test-uid" + suffix,
        namespace="cri-test-namespace" + suffix, attempt=2))
    config.linux.cgroup_parent = ""
    sandbox_id, _ = cri.run_pod(config)
    container = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="container-for-create-" + suffix, attempt=2),
        image=pb.ImageSpec(image=cri_image, user_specified_image=cri_image),
        command=["top"], linux=pb.LinuxContainerConfig())
    container_id = _start(cri, (sandbox_id, config), container)
    assert _status(cri, container_id).state == pb.CONTAINER_RUNNING
    assert cri.exec(container_id, "echo", "-n", "hello").stdout == b"hello"
    # critest's PortForward names no port: the client names it per stream.
    url = cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sandbox_id)).url
    assert url.startswith("http://")


def test_container_attributes_are_preserved_without_a_command_or_log_path(
        cri: Any, cri_image: str) -> None:
    """critest: preserving container attributes; the same image identifier across all APIs."""
    pb = cri.pb
    image_ref = cri.pull(cri_image)
    sandbox = cri.run_pod()
    # As critest: the image by its id, no command (the image's Cmd), no log path.
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="attrs", attempt=2),
        image=pb.ImageSpec(image=image_ref, user_specified_image=cri_image),
        labels={"foo": "bar", "io.kubernetes.container.name": "attrs"},
        annotations={"abc": "def"})
    container_id = cri.create_container(sandbox[0], sandbox[1], config)
    status = _status(cri, container_id)
    listed = cri.runtime.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(id=container_id))).containers
    assert len(listed) == 1
    for item in (status, listed[0]):
        assert item.metadata == config.metadata
        assert dict(item.labels) == dict(config.labels)
        assert dict(item.annotations) == {"abc": "def"}
        assert item.image_id == image_ref
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    status = _status(cri, container_id)
    assert status.image_id == image_ref
    # Not critest: created by id (as the kubelet does), the status names the image.
    assert (status.image.image, status.image.user_specified_image) == (cri_image, cri_image)


def test_verbose_statuses_carry_containerds_info(cri: Any, cri_image: str) -> None:
    """Not critest: ``crictl inspect``/``inspectp`` read ``info.pid`` and ``info.runtimeSpec``."""
    pb = cri.pb
    sandbox_id, container_id = cri.run_container(cri_image, ["top"])
    container = json.loads(cri.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=container_id, verbose=True)).info["info"])
    assert container["pid"] > 0 and container["sandboxID"] == sandbox_id
    assert container["runtimeSpec"]["process"]["args"] == ["top"]
    assert os.path.exists(f"/proc/{container['pid']}")
    sandbox = json.loads(cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=sandbox_id, verbose=True)).info["info"])
    assert sandbox["pid"] > 0 and sandbox["netNamespaceClosed"] is False
    assert sandbox["processStatus"] == "running"
    plain = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id))
    assert dict(plain.info) == {}


def test_a_created_container_can_be_removed(cri: Any, cri_image: str) -> None:
    """critest: runtime should support removing created container."""
    pb = cri.pb
    cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    container_id = cri.create_container(
        sandbox_id, sandbox_config, cri.container_config(cri_image, ["sh", "-c", "top"]))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
    listed = cri.runtime.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(id=container_id))).containers
    assert list(listed) == []


def test_stop_and_remove_of_uuid_shaped_unknown_ids_succeed(cri: Any) -> None:
    """critest idempotence: Stop/Remove of a sandbox or container that is not found."""
    pb = cri.pb
    unknown = str(uuid.uuid4())
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=unknown))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=unknown))
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=unknown, timeout=0))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=unknown))


def test_a_container_removed_twice_is_fine(cri: Any, cri_image: str) -> None:
    """critest idempotence: StopContainer should not return an error if already stopped."""
    pb = cri.pb
    _, container_id = cri.run_container(cri_image, ["sh", "-c", "top"])
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=60))
    assert _status(cri, container_id).state == pb.CONTAINER_EXITED
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=60))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))


def test_exec_sync_echo_n_is_exact_and_stderr_empty(cri: Any, cri_image: str) -> None:
    """critest: runtime should support execSync."""
    _, container_id = cri.run_container(cri_image, ["top"])
    response = cri.exec(container_id, "echo", "-n", "hello")
    assert (response.stdout, response.stderr, response.exit_code) == (b"hello", b"", 0)


def test_exec_sync_keeps_long_output_and_caps_a_flood(cri: Any, cri_daemon: Any,
                                                      cri_image: str) -> None:
    """Not critest: 3 MB comes back whole; 40 MB is cut to what a kubelet can receive."""
    from runtime.plugins.cri.containers import EXEC_SYNC_OUTPUT_LIMIT

    _, container_id = cri.run_container(cri_image, ["top"])
    long = cri.exec(container_id, "sh", "-c", "head -c 3000000 /dev/zero", timeout=30)
    assert (len(long.stdout), long.exit_code) == (3000000, 0)
    from runtime.plugins.cri.v1 import api_pb2_grpc as pb_grpc

    # A client with the kubelet's receive limit (16 MiB; grpc's default is 4 MiB).
    with grpc.insecure_channel(f"unix://{cri_daemon.cri_socket}", options=[
            ("grpc.max_receive_message_length", 16 << 20)]) as channel:
        flood = pb_grpc.RuntimeServiceStub(channel).ExecSync(cri.pb.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", "head -c 40000000 /dev/zero; exit 3"],
            timeout=60))
    assert (len(flood.stdout), flood.exit_code) == (EXEC_SYNC_OUTPUT_LIMIT, 3)


def test_container_stats_by_id_nil_filter_and_labels(cri: Any, cri_image: str) -> None:
    """critest: the five ``listing (container) stats`` specs."""
    pb = cri.pb
    cri.pull(cri_image)
    sandbox = cri.run_pod()
    ids = [_start(cri, sandbox, cri.container_config(
        cri_image, ["top"], name=f"container-for-stats-{n}", labels={"foo": "bar"} if n else {}))
        for n in range(3)]
    one = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=ids[0])).stats
    assert one.attributes.id == ids[0]
    assert "container-for-stats-" in one.attributes.metadata.name
    assert one.cpu.timestamp and one.memory.timestamp

    def listed(filter_: Any = None) -> set[str]:
        request = pb.ListContainerStatsRequest(filter=filter_) if filter_ else \
            pb.ListContainerStatsRequest()
        return {s.attributes.id for s in cri.runtime.ListContainerStats(request).stats}

    assert listed() == set(ids)
    assert listed(pb.ContainerStatsFilter(id=ids[0])) == {ids[0]}
    assert listed(pb.ContainerStatsFilter(label_selector={"foo": "bar"})) == set(ids[1:])
    assert listed(pb.ContainerStatsFilter(label_selector={"foo": "baz"})) == set()


def test_container_status_resources_follow_an_update(cri: Any, cri_image: str) -> None:
    """Not critest: the kubelet's in-place resize reads ContainerStatus.resources back."""
    pb = cri.pb
    config = cri.container_config(cri_image, ["top"])
    config.linux.resources.cpu_shares = 512
    config.linux.resources.memory_limit_in_bytes = 128 << 20
    cri.pull(cri_image)
    container_id = _start(cri, cri.run_pod(), config)
    resources = _status(cri, container_id).resources.linux
    assert (resources.cpu_shares, resources.memory_limit_in_bytes) == (512, 128 << 20)
    request = pb.UpdateContainerResourcesRequest(container_id=container_id)
    request.linux.memory_limit_in_bytes = 64 << 20
    cri.runtime.UpdateContainerResources(request)
    resources = _status(cri, container_id).resources.linux
    assert (resources.cpu_shares, resources.memory_limit_in_bytes) == (512, 64 << 20)


def test_run_as_user_username_and_group_as_critest_checks_them(cri: Any, cri_image: str) -> None:
    """critest: RunAsUser (1001), RunAsUserName (nobody), RunAsGroup (log ``1001:1002``)."""
    pb = cri.pb
    cri.pull(cri_image)
    sandbox = cri.run_pod()
    by_uid = cri.container_config(cri_image, ["sh", "-c", "top"])
    by_uid.linux.security_context.run_as_user.value = 1001
    assert cri.exec(_start(cri, sandbox, by_uid), "id", "-u").stdout == b"1001\n"
    by_name = cri.container_config(cri_image, ["sh", "-c", "top"])
    by_name.linux.security_context.run_as_username = "nobody"
    assert cri.exec(_start(cri, sandbox, by_name), "id", "-nu").stdout == b"nobody\n"
    grouped = cri.container_config(cri_image, ["sh", "-c", "echo $(id -u):$(id -g)"])
    grouped.linux.security_context.run_as_user.CopyFrom(pb.Int64Value(value=1001))
    grouped.linux.security_context.run_as_group.CopyFrom(pb.Int64Value(value=1002))
    status = _wait_exited(cri, _start(cri, sandbox, grouped))
    assert ("stdout", "1001:1002") in _log_entries(status.log_path)


@pytest.mark.parametrize("readonly", [False, True])
def test_readonly_rootfs_as_critest_checks_it(cri: Any, cri_image: str, readonly: bool) -> None:
    """critest: runtime should support that ReadOnlyRootfs is false / true."""
    config = cri.container_config(
        cri_image, ["sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"])
    config.linux.security_context.readonly_rootfs = readonly
    cri.pull(cri_image)
    status = _wait_exited(cri, _start(cri, cri.run_pod(), config))
    expected = (("stderr", "touch: test.go: Read-only file system") if readonly
                else ("stdout", "Found"))
    assert expected in _log_entries(status.log_path)


def test_readonly_paths_error_message(cri: Any, cri_image: str) -> None:
    """critest: runtime should support ReadonlyPaths."""
    config = cri.container_config(cri_image, ["sh", "-c", "top"])
    config.linux.security_context.readonly_paths.append("/tmp")
    cri.pull(cri_image)
    response = cri.exec(_start(cri, cri.run_pod(), config), "touch", "/tmp/test")
    assert response.exit_code != 0
    assert response.stderr == b"touch: /tmp/test: Read-only file system\n"


def _brctl_works(cri: Any, container_id: str) -> bool:
    return int(cri.exec(container_id, "sh", "-c", "brctl addbr foobar").exit_code) == 0


def test_privileged_and_net_admin_may_manage_the_network(cri: Any, cri_image: str) -> None:
    """critest: Privileged is true / false; adding capability (NET_ADMIN)."""
    cri.pull(cri_image)
    privileged_pod = _privileged_pod(cri)
    privileged = cri.container_config(cri_image, ["sh", "-c", "top"])
    privileged.linux.security_context.privileged = True
    assert _brctl_works(cri, _start(cri, privileged_pod, privileged))
    plain_pod = cri.run_pod()
    plain = cri.container_config(cri_image, ["sh", "-c", "top"])
    assert not _brctl_works(cri, _start(cri, plain_pod, plain))
    net_admin = cri.container_config(cri_image, ["sh", "-c", "top"])
    net_admin.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    assert _brctl_works(cri, _start(cri, plain_pod, net_admin))


def _cap_bnd(cri: Any, container_id: str) -> str:
    status = cri.exec(container_id, "cat", "/proc/self/status").stdout.decode()
    return next(x.split()[1] for x in status.splitlines() if x.startswith("CapBnd:"))


def test_adding_and_dropping_all_capabilities_sets_the_bounding_set(
        cri: Any, cri_image: str) -> None:
    """critest: adding ALL capabilities / dropping ALL capabilities (CapBnd)."""
    cri.pull(cri_image)
    sandbox = cri.run_pod()
    every = cri.container_config(cri_image, ["sh", "-c", "top"])
    every.linux.security_context.capabilities.add_capabilities.append("ALL")
    none = cri.container_config(cri_image, ["sh", "-c", "top"])
    none.linux.security_context.capabilities.drop_capabilities.append("ALL")
    assert _cap_bnd(cri, _start(cri, sandbox, every)) != "0000000000000000"
    assert _cap_bnd(cri, _start(cri, sandbox, none)) == "0000000000000000"


def test_dropping_net_raw_refuses_ping(cri: Any, cri_image: str) -> None:
    """critest: runtime should support dropping capability (NET_RAW: ping fails)."""
    config = cri.container_config(cri_image, ["sh", "-c", "top"])
    config.linux.security_context.capabilities.drop_capabilities.append("NET_RAW")
    cri.pull(cri_image)
    response = cri.exec(_start(cri, cri.run_pod(), config), "sh", "-c", "ping -c 1 127.0.0.1")
    assert response.exit_code != 0
    assert b"permission denied" in response.stderr.lower()


def _seccomp_field(cri: Any, container_id: str) -> str:
    out = cri.exec(container_id, "grep", "Seccomp:", "/proc/self/status").stdout.decode()
    return out.split()[1]


def test_seccomp_profiles_as_critest_sets_them(cri: Any, cri_image: str, tmp_path: Path) -> None:
    """critest SeccompProfilePath: unconfined, localhost (chmod), default (``{}``), hostname."""
    pb = cri.pb
    cri.pull(cri_image)
    block_chmod = tmp_path / "block-chmod.json"
    block_chmod.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}))
    block_hostname = tmp_path / "block-host-name.json"
    block_hostname.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}))
    sandbox = cri.run_pod()

    def run(profile: Any, caps: tuple[str, ...] = ()) -> str:
        config = cri.container_config(cri_image, ["sh", "-c", "top"])
        if profile is not None:
            config.linux.security_context.seccomp.CopyFrom(profile)
        config.linux.security_context.capabilities.add_capabilities.extend(caps)
        return _start(cri, sandbox, config)

    assert _seccomp_field(cri, run(pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Unconfined))) == "0"
    # Go's &SecurityProfile{} is an empty message: RuntimeDefault (enum value 0).
    assert _seccomp_field(cri, run(pb.SecurityProfile())) == "2"
    chmod = cri.exec(run(pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                            localhost_ref=str(block_chmod))),
                     "chmod", "400", "/")
    assert chmod.exit_code != 0 and b"Operation not permitted" in chmod.stderr
    free = run(pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined), ("SYS_ADMIN",))
    assert cri.exec(free, "hostname", "ANewHostName").exit_code == 0
    blocked = run(pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                     localhost_ref=str(block_hostname)), ("SYS_ADMIN",))
    assert cri.exec(blocked, "hostname", "ANewHostName").exit_code != 0
    # A privileged container ignores the profile that blocks sethostname.
    privileged = cri.container_config(cri_image, ["sh", "-c", "top"])
    privileged.linux.security_context.privileged = True
    privileged.linux.security_context.seccomp.CopyFrom(pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(block_hostname)))
    privileged_id = _start(cri, _privileged_pod(cri), privileged)
    assert cri.exec(privileged_id, "hostname", "ANewHostName").exit_code == 0


def test_unsafe_ipc_sysctl_fs_mqueue_msg_max(cri: Any, cri_image: str) -> None:
    """critest: should support unsafe sysctls (fs.mqueue.msg_max)."""
    config = cri.pod_config()
    config.linux.sysctls["fs.mqueue.msg_max"] = "100"
    _, container_id = cri.run_container(cri_image, ["top"], pod=cri.run_pod(config))
    assert cri.exec(container_id, "cat", "/proc/sys/fs/mqueue/msg_max").stdout == b"100\n"


@pytest.mark.parametrize("host_ipc", [True, False])
def test_host_ipc_shows_the_hosts_shared_memory(cri: Any, cri_image: str,
                                                host_ipc: bool) -> None:
    """critest: HostIpc is true / false (a segment made on the host with ipcmk)."""
    made = subprocess.run(["ipcmk", "-M", "1048576"], capture_output=True, text=True,
                          check=True).stdout
    segment = made.strip().rsplit(" ", 1)[-1]
    try:
        pb = cri.pb
        mode = pb.NODE if host_ipc else pb.POD
        config = cri.pod_config()
        config.linux.security_context.namespace_options.ipc = mode
        container = cri.container_config(cri_image, ["sh", "-c", "top"])
        container.linux.security_context.namespace_options.ipc = mode
        cri.pull(cri_image)
        container_id = _start(cri, cri.run_pod(config), container)
        shm = cri.exec(container_id, "cat", "/proc/sysvipc/shm").stdout.decode()
        ids = {line.split()[1] for line in shm.splitlines()[1:] if line.split()}
        assert (segment in ids) is host_ipc
    finally:
        subprocess.run(["ipcrm", "-m", segment], check=False)


@pytest.mark.parametrize("host_network", [True, False])
def test_host_network_shows_a_host_listener_in_netstat(cri: Any, cri_image: str,
                                                       host_network: bool) -> None:
    """critest: HostNetwork is true / false (``netstat -ln`` in the container's log)."""
    pb = cri.pb
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        port = server.getsockname()[1]
        config = cri.pod_config()
        config.linux.security_context.namespace_options.network = \
            pb.NODE if host_network else pb.POD
        cri.pull(cri_image)
        status = _wait_exited(cri, _start(cri, cri.run_pod(config), cri.container_config(
            cri_image, ["sh", "-c", "netstat -ln"])))
        logged = " ".join(message for _, message in _log_entries(status.log_path))
        assert (f":{port} " in logged) is host_network


def test_oom_as_critest_provokes_it(cri: Any, cri_image: str) -> None:
    """critest: should terminate with exitCode 137 and reason OOMKilled (dd bs=20M, 15 MiB)."""
    config = cri.container_config(cri_image, ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"])
    config.linux.resources.memory_limit_in_bytes = 15 << 20
    config.linux.resources.memory_swap_limit_in_bytes = 15 << 20
    cri.pull(cri_image)
    container_id = _start(cri, _privileged_pod(cri), config)
    deadline = time.monotonic() + 30
    status = _wait_exited(cri, container_id)
    while not status.reason and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _status(cri, container_id)
    assert (status.state, status.reason, status.exit_code) == (
        cri.pb.CONTAINER_EXITED, "OOMKilled", 137)


def _host_address() -> str:
    """A non-loopback IPv4 address of this host."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout
    return next(a for a in out.split() if "." in a and not a.startswith("127."))


def _answers(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := conn.recv(4096):
                    reply += chunk
                if b"hello-from-pod" in reply:
                    return True
                raise ConnectionError("not served yet")
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def test_a_host_port_with_a_host_ip_answers_only_on_that_address(cri: Any,
                                                                 cri_image: str) -> None:
    """Not critest: PortMapping.host_ip binds the host port to that address only."""
    address = _host_address()
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    config = cri.pod_config()
    config.port_mappings.add(protocol=cri.pb.TCP, container_port=80, host_port=port,
                             host_ip=address)
    cri.run_container(cri_image, ["sh", "-c", "mkdir -p /www && echo hello-from-pod > "
                                  "/www/index.html && exec httpd -f -p 80 -h /www"],
                      pod=cri.run_pod(config))
    assert _answers(address, port, 20)
    assert not _answers("127.0.0.1", port, 1)


# -- mounts -------------------------------------------------------------------------


@pytest.mark.parametrize("propagation", ["PROPAGATION_PRIVATE", "PROPAGATION_HOST_TO_CONTAINER",
                                         "PROPAGATION_BIDIRECTIONAL"])
def test_mount_propagation(cri: Any, cri_image: str, tmp_path: Path, propagation: str) -> None:
    """critest: mount with 'rprivate' / 'rslave' / 'rshared' (and the status' mounts)."""
    pb = cri.pb
    mode = getattr(pb, propagation)
    source = tmp_path / "mnt"
    point = source / "propagationMnt"
    point.mkdir(parents=True)
    flag_dir = tmp_path / "propagationSrcDir"
    flag_dir.mkdir()
    (flag_dir / "flagFile").touch()
    _mount(str(source), str(source), "", _MS_BIND | _MS_REC)
    try:
        shared = mode != pb.PROPAGATION_PRIVATE
        _mount("", str(source), "", (_MS_SHARED if shared else _MS_PRIVATE) | _MS_REC)
        config = cri.container_config(cri_image, ["sh", "-c", "top"])
        config.linux.security_context.privileged = True
        config.mounts.add(host_path=str(source), container_path=str(source), propagation=mode)
        cri.pull(cri_image)
        sandbox = _privileged_pod(cri)
        container_id = cri.create_container(sandbox[0], sandbox[1], config)
        mounts = _status(cri, container_id).mounts
        assert [(m.container_path, m.host_path, m.readonly, m.selinux_relabel, m.propagation)
                for m in mounts] == [(str(source), str(source), False, False, mode)]
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
        _mount(str(flag_dir), str(point), "", _MS_BIND | _MS_REC)
        seen = cri.exec(container_id, "ls", "-A", str(point)).stdout
        assert bool(seen) is (mode != pb.PROPAGATION_PRIVATE)
        inner = source / "containerMntPoint"
        assert cri.exec(container_id, "sh", "-c", f"mkdir -p {inner} && "
                        f"mount --bind /etc {inner}").exit_code == 0
        assert bool(os.listdir(inner)) is (mode == pb.PROPAGATION_BIDIRECTIONAL)
    finally:
        cri.remove_everything()
        _umount(str(source / "containerMntPoint"))
        _umount(str(point))
        _umount(str(source))


def test_a_non_recursive_readonly_mount_leaves_submounts_writable(
        cri: Any, cri_image: str, tmp_path: Path) -> None:
    """critest: should support non-recursive readonly mounts (a tmpfs under the host path)."""
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    _mount("none", str(tmpfs), "tmpfs", 0)
    try:
        config = cri.container_config(cri_image, ["sh", "-c", "top"])
        config.mounts.add(host_path=str(tmp_path), container_path="/mnt", readonly=True,
                          selinux_relabel=True)
        cri.pull(cri_image)
        container_id = _start(cri, _privileged_pod(cri), config)
        assert len(_status(cri, container_id).mounts) == 1
        assert cri.exec(container_id, "touch", "/mnt/tmpfs/file").exit_code == 0
        assert cri.exec(container_id, "touch", "/mnt/top").exit_code != 0
    finally:
        cri.remove_everything()
        _umount(str(tmpfs))


def _tmpfs_under(host: Path) -> Path:
    tmpfs = host / "tmpfs"
    tmpfs.mkdir()
    _mount("none", str(tmpfs), "tmpfs", 0)
    return tmpfs


def test_recursive_readonly_mounts_are_advertised_for_runc(cri: Any) -> None:
    """critest asks Status: the default handler and runc's (runc 1.1 has ``rro``) have it."""
    handlers = cri.runtime.Status(cri.pb.StatusRequest()).runtime_handlers
    features = {h.name: h.features.recursive_read_only_mounts for h in handlers}
    assert features[""] is True
    assert features["runc"] is True
    # Any other runtime has it exactly when its own features document lists ``rro``.
    for name in set(features) - {"", "runc"}:
        document = json.loads(subprocess.run([name, "features"], capture_output=True,
                                             check=False).stdout or b"{}")
        assert features[name] is ("rro" in document.get("mountOptions", [])), name


def test_a_recursive_readonly_mount_makes_submounts_readonly(
        cri: Any, cri_image: str, tmp_path: Path) -> None:
    """critest: should support recursive readonly mounts (the tmpfs under it is read-only)."""
    tmpfs = _tmpfs_under(tmp_path)
    try:
        config = cri.container_config(cri_image, ["sh", "-c", "top"])
        config.mounts.add(host_path=str(tmp_path), container_path="/mnt", readonly=True,
                          recursive_read_only=True, selinux_relabel=True)
        cri.pull(cri_image)
        container_id = _start(cri, _privileged_pod(cri), config)
        assert len(_status(cri, container_id).mounts) == 1
        result = cri.exec(container_id, "sh", "-c", "touch /mnt/tmpfs/foo 2>&1")
        assert result.exit_code != 0
        assert b"Read-only file system" in result.stdout
        assert cri.exec(container_id, "touch", "/mnt/top").exit_code != 0
        # The host's tmpfs itself stays writable: only the container's copy is read-only.
        (tmpfs / "host-side").write_text("ok")
    finally:
        cri.remove_everything()
        _umount(str(tmpfs))


@pytest.mark.parametrize("readonly,propagation", [
    (True, "PROPAGATION_HOST_TO_CONTAINER"), (True, "PROPAGATION_BIDIRECTIONAL"),
    (False, "PROPAGATION_PRIVATE")], ids=["host-to-container", "bidirectional", "read-write"])
def test_a_recursive_readonly_mount_needs_readonly_and_private_propagation(
        cri: Any, cri_image: str, tmp_path: Path, readonly: bool, propagation: str) -> None:
    """critest: should reject a recursive readonly mount with PROPAGATION_HOST_TO_CONTAINER,
    with PROPAGATION_BIDIRECTIONAL, and with ReadOnly: false (INVALID_ARGUMENT, as containerd).
    """
    tmpfs = _tmpfs_under(tmp_path)
    try:
        config = cri.container_config(cri_image)
        config.mounts.add(host_path=str(tmp_path), container_path="/mnt", readonly=readonly,
                          recursive_read_only=True, selinux_relabel=True,
                          propagation=getattr(cri.pb, propagation))
        cri.pull(cri_image)
        sandbox_id, sandbox_config = _privileged_pod(cri)
        with pytest.raises(grpc.RpcError) as err:
            cri.create_container(sandbox_id, sandbox_config, config)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "recursive read-only" in (err.value.details() or "")
        assert list(cri.runtime.ListContainers(cri.pb.ListContainersRequest()).containers) == []
        # The name was not kept: the same container, read-only and private, is created.
        config.mounts[0].readonly = True
        config.mounts[0].propagation = cri.pb.PROPAGATION_PRIVATE
        cri.create_container(sandbox_id, sandbox_config, config)
    finally:
        cri.remove_everything()
        _umount(str(tmpfs))


# -- ImageService -------------------------------------------------------------------


def test_removing_an_image_by_one_tag_removes_every_tag(cri: Any, registry: Registry,
                                                        busybox_layout: Any) -> None:
    """critest: removing image by one tag should remove all tags."""
    refs = [registry.push_layout(busybox_layout.path, busybox_layout.ref_name,
                                 f"cri/test-image-tags:{n}") for n in (1, 2, 3)]
    image_ids = {cri.pull(ref) for ref in refs}
    assert len(image_ids) == 1
    assert sorted(_image_status(cri, refs[0]).repo_tags) == sorted(refs)
    _remove_image(cri, refs[0])
    assert [_image_status(cri, ref) for ref in [*refs, *image_ids]] == [None] * 4


def test_one_image_from_two_registry_names_is_one_image_removed_together(
        cri: Any, registry: Registry, busybox_layout: Any) -> None:
    """critest: the same image identifier from different registries; removing from one."""
    first = registry.push_layout(busybox_layout.path, busybox_layout.ref_name, "cri/pause:3.9")
    second = first.replace("127.0.0.1:", "localhost:", 1)
    image_id = cri.pull(first)
    assert cri.pull(second) == image_id
    assert sorted(_image_status(cri, second).repo_tags) == sorted([first, second])
    _remove_image(cri, first)
    assert [_image_status(cri, ref) for ref in (first, second, image_id)] == [None] * 3


def test_a_reference_without_a_tag_is_pulled_as_latest(cri: Any, registry: Registry,
                                                       busybox_layout: Any) -> None:
    """critest: public image without tag should be pulled and removed."""
    tagged = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,
                                  "cri/test-image-latest:latest")
    cri.pull(tagged.removesuffix(":latest"))
    image = _image_status(cri, tagged.removesuffix(":latest"))
    assert list(image.repo_tags) == [tagged]
    _remove_image(cri, image.id)
    assert _image_status(cri, tagged) is None


def test_an_image_pulled_by_digest_has_no_tag_and_exactly_that_digest(
        cri: Any, registry: Registry, busybox_layout: Any) -> None:
    """critest: public image with digest should be pulled and removed."""
    tagged = registry.push_layout(busybox_layout.path, busybox_layout.ref_name,
                                  "cri/test-image-digest:1")
    cri.pull(tagged)
    by_digest = _image_status(cri, tagged).repo_digests[0]
    _remove_image(cri, tagged)
    image_id = cri.pull(by_digest)
    image = _image_status(cri, by_digest)
    assert (image.id, list(image.repo_tags), list(image.repo_digests)) == (
        image_id, [], [by_digest])
    assert image.size > 0


def test_three_different_images_list_their_own_tag(cri: Any, registry: Registry,
                                                   tmp_path: Path) -> None:
    """critest: listImage should get exactly 3 image in the result list."""
    refs = []
    for n in (1, 2, 3):
        layout = busybox_image(tmp_path / f"layout-{n}", env=[f"IMAGE={n}"])
        refs.append(registry.push_layout(layout.path, layout.ref_name,
                                         f"cri/test-image-{n}:latest"))
    ids = [cri.pull(ref) for ref in refs]
    assert len(set(ids)) == 3
    listed = {i.id: list(i.repo_tags)
              for i in cri.images.ListImages(cri.pb.ListImagesRequest()).images}
    assert [listed[i] for i in ids] == [[ref] for ref in refs]


def test_concurrent_removes_each_leave_the_image_gone(cri: Any, cri_image: str) -> None:
    """critest: should not fail on simultaneous RemoveImage calls."""
    image_id = cri.pull(cri_image)

    def remove_then_status(_: int) -> Any:
        _remove_image(cri, image_id)
        return _image_status(cri, image_id)

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        assert list(pool.map(remove_then_status, range(5))) == [None] * 5


def test_verbose_image_status_carries_the_image_config(cri: Any, cri_image: str) -> None:
    """Not critest: ``crictl inspecti`` shows ``info.imageSpec`` (the OCI image config)."""
    cri.pull(cri_image)
    response = cri.images.ImageStatus(cri.pb.ImageStatusRequest(
        image=cri.pb.ImageSpec(image=cri_image), verbose=True))
    spec = json.loads(response.info["info"])["imageSpec"]
    assert spec["config"]["Cmd"] == ["sh"]
    assert spec["rootfs"]["type"] == "layers"


def test_remove_of_an_all_zero_image_id_succeeds_twice(cri: Any) -> None:
    """critest idempotence: RemoveImage should not return an error if not found."""
    _remove_image(cri, "0" * 64)
    _remove_image(cri, "0" * 64)
