"""Security contexts and namespace modes of CRI containers."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grpc
import pytest

pytestmark = pytest.mark.root


def _cap_eff(cri: Any, container_id: str) -> int:
    status = cri.exec(container_id, "cat", "/proc/self/status").stdout.decode()
    line = next(x for x in status.splitlines() if x.startswith("CapEff:"))
    return int(line.split()[1], 16)


def _with_security(cri: Any, image: str, command: list[str] | None = None, *,
                   pod: Any = None, **sec: Any) -> str:
    config = cri.container_config(image, command or ["sleep", "3600"])
    for key, value in sec.items():
        target = config.linux.security_context
        if hasattr(value, "CopyFrom"):
            getattr(target, key).CopyFrom(value)
        elif isinstance(value, list):
            getattr(target, key).extend(value)
        else:
            setattr(target, key, value)
    cri.pull(image)
    sandbox_id, sandbox_config = pod or cri.run_pod()
    container_id = cri.create_container(sandbox_id, sandbox_config, config)
    cri.runtime.StartContainer(cri.pb.StartContainerRequest(container_id=container_id))
    return str(container_id)


def test_run_as_user_and_group_and_supplemental_groups(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    container_id = _with_security(cri, cri_image, run_as_user=pb.Int64Value(value=1000),
                                  run_as_group=pb.Int64Value(value=1004),
                                  supplemental_groups=[2001, 2002])
    assert cri.exec(container_id, "id", "-u").stdout == b"1000\n"
    assert cri.exec(container_id, "id", "-g").stdout == b"1004\n"
    groups = cri.exec(container_id, "id", "-G").stdout.decode().split()
    assert {"2001", "2002"} <= set(groups)


def test_run_as_username_is_looked_up_in_the_image(cri: Any, cri_image: str) -> None:
    container_id = _with_security(cri, cri_image, run_as_username="app")
    assert cri.exec(container_id, "id", "-u").stdout == b"1000\n"


def test_run_as_group_without_a_user_is_invalid_argument(cri: Any, cri_image: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _with_security(cri, cri_image, run_as_group=cri.pb.Int64Value(value=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_readonly_rootfs_refuses_writes(cri: Any, cri_image: str) -> None:
    container_id = _with_security(cri, cri_image, readonly_rootfs=True)
    assert cri.exec(container_id, "touch", "/file").exit_code != 0
    assert cri.exec(container_id, "touch", "/dev/shm/ok").exit_code == 0


def test_capabilities_drop_all_and_add_one(cri: Any, cri_image: str) -> None:
    none = _with_security(cri, cri_image,
                          capabilities=cri.pb.Capability(drop_capabilities=["ALL"]))
    assert _cap_eff(cri, none) == 0
    net_admin = _with_security(cri, cri_image, capabilities=cri.pb.Capability(
        drop_capabilities=["ALL"], add_capabilities=["NET_ADMIN"]))
    assert _cap_eff(cri, net_admin) == 1 << 12  # CAP_NET_ADMIN
    default = _with_security(cri, cri_image)
    assert not _cap_eff(cri, default) & (1 << 21)  # no CAP_SYS_ADMIN by default


def test_privileged_needs_a_privileged_sandbox_and_may_mount(cri: Any, cri_image: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _with_security(cri, cri_image, privileged=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    config = cri.pod_config()
    config.linux.security_context.privileged = True
    pod = cri.run_pod(config)
    container_id = _with_security(cri, cri_image, pod=pod, privileged=True)
    assert cri.exec(container_id, "mount", "-t", "tmpfs", "t", "/tmp").exit_code == 0
    unprivileged = _with_security(cri, cri_image)
    assert cri.exec(unprivileged, "mount", "-t", "tmpfs", "t", "/tmp").exit_code != 0


def test_masked_and_readonly_paths(cri: Any, cri_image: str) -> None:
    container_id = _with_security(cri, cri_image, masked_paths=["/proc/cpuinfo"],
                                  readonly_paths=["/tmp"])
    assert cri.exec(container_id, "cat", "/proc/cpuinfo").stdout == b""
    assert cri.exec(container_id, "touch", "/tmp/x").exit_code != 0


def test_no_new_privs(cri: Any, cri_image: str) -> None:
    on = _with_security(cri, cri_image, no_new_privs=True)
    off = _with_security(cri, cri_image)
    assert b"NoNewPrivs:\t1" in cri.exec(on, "cat", "/proc/self/status").stdout
    assert b"NoNewPrivs:\t0" in cri.exec(off, "cat", "/proc/self/status").stdout


def _pid1(cri: Any, container_id: str) -> bytes:
    return bytes(cri.exec(container_id, "cat", "/proc/1/cmdline").stdout)


def test_pid_namespace_pod_shares_the_infra_pid_1(cri: Any, cri_image: str) -> None:
    pod = cri.run_pod()
    first = _with_security(cri, cri_image, pod=pod)
    second = _with_security(cri, cri_image, ["sleep", "3601"], pod=pod)
    assert _pid1(cri, first).startswith(b"/pause")
    assert b"3601" in cri.exec(first, "ps", "-o", "args").stdout
    del second


def test_pid_namespace_container_has_its_own_pid_1(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    container_id = _with_security(
        cri, cri_image, namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))
    assert _pid1(cri, container_id) == b"sleep\x003600\x00"


def test_pid_namespace_target_joins_another_container(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    pod = cri.run_pod()
    target = _with_security(cri, cri_image, ["sleep", "3602"], pod=pod,
                            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))
    joined = _with_security(cri, cri_image, pod=pod,
                            namespace_options=pb.NamespaceOption(pid=pb.TARGET, target_id=target))
    assert _pid1(cri, joined) == b"sleep\x003602\x00"


def test_host_pid_and_host_ipc(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = pb.NODE
    config.linux.security_context.namespace_options.ipc = pb.NODE
    pod = cri.run_pod(config)
    container_id = _with_security(cri, cri_image, pod=pod,
                                  namespace_options=pb.NamespaceOption(pid=pb.NODE, ipc=pb.NODE))
    for ns in ("pid", "ipc"):
        inside = cri.exec(container_id, "readlink", f"/proc/self/ns/{ns}").stdout.decode().strip()
        assert inside == os.readlink(f"/proc/self/ns/{ns}")


def test_pod_ipc_namespace_is_not_the_hosts(cri: Any, cri_image: str) -> None:
    container_id = _with_security(cri, cri_image)
    inside = cri.exec(container_id, "readlink", "/proc/self/ns/ipc").stdout.decode().strip()
    assert inside != os.readlink("/proc/self/ns/ipc")


def test_sysctls_apply_to_the_pod(cri: Any, cri_image: str) -> None:
    config = cri.pod_config()
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    config.linux.sysctls["net.ipv4.ip_local_port_range"] = "40000 41000"
    pod = cri.run_pod(config)
    _, container_id = cri.run_container(cri_image, pod=pod)
    assert cri.exec(container_id, "cat", "/proc/sys/kernel/shm_rmid_forced").stdout == b"1\n"
    ports = cri.exec(container_id, "cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout
    assert ports.split() == [b"40000", b"41000"]


def test_host_path_mounts_follow_symlinks_and_honour_readonly(cri: Any, cri_image: str,
                                                              tmp_path: Any) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "data").write_text("from-host\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    config = cri.container_config(cri_image)
    config.mounts.add(container_path="/data", host_path=str(link), readonly=True)
    config.mounts.add(container_path="/made", host_path=str(tmp_path / "new" / "dir"))
    cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    container_id = cri.create_container(sandbox_id, sandbox_config, config)
    cri.runtime.StartContainer(cri.pb.StartContainerRequest(container_id=container_id))
    assert cri.exec(container_id, "cat", "/data/data").stdout == b"from-host\n"
    assert cri.exec(container_id, "touch", "/data/x").exit_code != 0
    assert cri.exec(container_id, "touch", "/made/y").exit_code == 0
    assert (tmp_path / "new" / "dir" / "y").exists()


def test_oom_killed_container_has_reason_oomkilled(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    config = cri.container_config(
        cri_image, ["sh", "-c", "head -c 100000000 /dev/zero > /dev/shm/fill"])
    config.linux.resources.memory_limit_in_bytes = 24 << 20
    config.linux.resources.memory_swap_limit_in_bytes = 24 << 20
    cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    container_id = cri.create_container(sandbox_id, sandbox_config, config)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    deadline = time.monotonic() + 30
    while True:
        status = cri.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id)).status
        if (status.state == pb.CONTAINER_EXITED and status.reason) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status.state == pb.CONTAINER_EXITED
    assert status.reason == "OOMKilled"
    assert status.exit_code == 137


def _seccomp_mode(cri: Any, container_id: str) -> str:
    status = cri.exec(container_id, "cat", "/proc/self/status").stdout.decode()
    return str(next(x.split()[1] for x in status.splitlines() if x.startswith("Seccomp:")))


def test_seccomp_nil_is_unconfined_and_runtime_default_filters(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    unconfined = _with_security(cri, cri_image)
    assert _seccomp_mode(cri, unconfined) == "0"
    filtered = _with_security(cri, cri_image, seccomp=pb.SecurityProfile(
        profile_type=pb.SecurityProfile.RuntimeDefault))
    assert _seccomp_mode(cri, filtered) == "2"


def test_seccomp_localhost_profile_is_read_from_the_host(cri: Any, cri_image: str,
                                                         tmp_path: Any) -> None:
    import json

    pb = cri.pb
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    container_id = _with_security(cri, cri_image, seccomp=pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile)))
    assert _seccomp_mode(cri, container_id) == "2"
    assert cri.exec(container_id, "mkdir", "/tmp/no").exit_code != 0
    assert cri.exec(container_id, "touch", "/tmp/yes").exit_code == 0


def test_privileged_ignores_seccomp(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    config = cri.pod_config()
    config.linux.security_context.privileged = True
    pod = cri.run_pod(config)
    container_id = _with_security(cri, cri_image, pod=pod, privileged=True,
                                  seccomp=pb.SecurityProfile(
                                      profile_type=pb.SecurityProfile.RuntimeDefault))
    assert _seccomp_mode(cri, container_id) == "0"


def _infra_seccomp_mode(cri: Any, sandbox_id: str) -> str:
    info = json.loads(cri.runtime.PodSandboxStatus(cri.pb.PodSandboxStatusRequest(
        pod_sandbox_id=sandbox_id, verbose=True)).info["info"])
    with open(f"/proc/{info['pid']}/status") as status:
        line = next(x for x in status if x.startswith("Seccomp:"))
    return line.split()[1]


def test_infra_process_takes_the_pods_seccomp_profile(cri: Any) -> None:
    """None asked for: unconfined, as containerd's sandbox container; RuntimeDefault: filtered."""
    pb = cri.pb
    plain, _ = cri.run_pod(cri.pod_config("plain"))
    assert _infra_seccomp_mode(cri, plain) == "0"
    config = cri.pod_config("confined")
    config.linux.security_context.seccomp.CopyFrom(
        pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
    confined, _ = cri.run_pod(config)
    assert _infra_seccomp_mode(cri, confined) == "2"


def _ns_link(cri: Any, container_id: str, kind: str) -> str:
    return bytes(cri.exec(container_id, "readlink", f"/proc/self/ns/{kind}").stdout).decode()


@pytest.mark.parametrize("pod_pid", ["POD", "CONTAINER"], ids=["with-infra", "without-infra"])
def test_network_and_ipc_modes_other_than_node_are_the_pods(cri: Any, cri_image: str,
                                                            pod_pid: str) -> None:
    """As containerd: a container's network and IPC modes (POD, CONTAINER, TARGET) join the
    pod's namespaces; only the pod's NODE is the host's. A pod's IPC mode CONTAINER is an
    IPC namespace of its own, not the host's."""
    pb = cri.pb
    pid = getattr(pb, pod_pid)
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = pid
    config.linux.security_context.namespace_options.ipc = pb.CONTAINER
    pod = cri.run_pod(config)
    first = _with_security(cri, cri_image, pod=pod, namespace_options=pb.NamespaceOption(pid=pid))
    for mode in (pb.CONTAINER, pb.TARGET):
        other = _with_security(cri, cri_image, ["sleep", "3601"], pod=pod,
                               namespace_options=pb.NamespaceOption(
                                   network=mode, ipc=mode, pid=pid, target_id=first))
        for kind in ("net", "ipc"):
            inside = _ns_link(cri, other, kind)
            assert inside == _ns_link(cri, first, kind), (mode, kind)
            assert inside.strip() != os.readlink(f"/proc/self/ns/{kind}"), (mode, kind)


def test_pid_namespace_target_must_be_a_running_container_of_the_same_pod(
        cri: Any, cri_image: str) -> None:
    """A TARGET outside the pod (another pod's container, an unknown id, none) is refused:
    no pod joins the PID namespace of another pod's container."""
    pb = cri.pb
    elsewhere = _with_security(cri, cri_image, ["sleep", "3603"],
                               namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))
    pod = cri.run_pod()
    for target, word in ((elsewhere, "not a container of pod sandbox"),
                         ("0" * 64, "is not a container"), ("", "needs a target_id")):
        with pytest.raises(grpc.RpcError) as refused:
            _with_security(cri, cri_image, pod=pod, namespace_options=pb.NamespaceOption(
                pid=pb.TARGET, target_id=target))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert word in (refused.value.details() or ""), refused.value.details()
    assert cri.runtime.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=pod[0]))).containers == []
