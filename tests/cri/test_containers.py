"""Containers: create, start, stop, remove, status, list, logs, exec, resources."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

pytestmark = pytest.mark.root

CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) "
                          r"(stdout|stderr) (P|F) (.*)$")


def _status(cri: Any, container_id: str) -> Any:
    return cri.runtime.ContainerStatus(
        cri.pb.ContainerStatusRequest(container_id=container_id)).status


def _wait_state(cri: Any, container_id: str, state: int, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(cri, container_id)
        if status.state == state or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_container_lifecycle_created_running_exited_removed(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    image_ref = cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    container_id = cri.create_container(sandbox_id, sandbox_config,
                                        cri.container_config(cri_image, labels={"k": "v"}))
    status = _status(cri, container_id)
    assert status.state == pb.CONTAINER_CREATED
    assert status.image_ref == status.image_id == image_ref
    assert status.image.image == cri_image
    assert status.labels == {"k": "v"}
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    status = _status(cri, container_id)
    assert status.state == pb.CONTAINER_RUNNING
    assert status.started_at >= status.created_at > 0
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=2))
    status = _status(cri, container_id)
    assert status.state == pb.CONTAINER_EXITED
    assert status.finished_at > 0
    assert status.reason == "Error"  # sleep killed by a signal
    listed = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [(c.id, c.image_ref, c.image_id) for c in listed] == [
        (container_id, image_ref, image_ref)]
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
    assert cri.runtime.ListContainers(pb.ListContainersRequest()).containers == []


def test_remove_container_force_stops_a_running_one(cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(cri_image)
    cri.runtime.RemoveContainer(cri.pb.RemoveContainerRequest(container_id=container_id))
    with pytest.raises(grpc.RpcError) as err:
        _status(cri, container_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_container_kills_after_the_timeout(cri: Any, cri_image: str) -> None:
    # The shell ignores SIGTERM: StopContainer must SIGKILL once the timeout passed. It says
    # when its trap is set, so the SIGTERM cannot arrive first and end it with 143.
    _, container_id = cri.run_container(
        cri_image, ["sh", "-c", "trap '' TERM; touch /tmp/trapped; while true; do sleep 0.1; done"])
    deadline = time.monotonic() + 10
    while cri.exec(container_id, "test", "-e", "/tmp/trapped").exit_code != 0:
        assert time.monotonic() < deadline, "the shell never set its trap"
        time.sleep(0.05)
    started = time.monotonic()
    cri.runtime.StopContainer(cri.pb.StopContainerRequest(container_id=container_id, timeout=1))
    assert time.monotonic() - started < 10
    status = _status(cri, container_id)
    assert status.state == cri.pb.CONTAINER_EXITED
    assert status.exit_code == 137


def test_a_container_that_exits_zero_is_completed(cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(cri_image, ["true"])
    status = _wait_state(cri, container_id, cri.pb.CONTAINER_EXITED)
    assert (status.state, status.exit_code, status.reason) == (
        cri.pb.CONTAINER_EXITED, 0, "Completed")


def test_a_container_that_fails_has_reason_error_and_its_exit_code(cri: Any,
                                                                   cri_image: str) -> None:
    _, container_id = cri.run_container(cri_image, ["sh", "-c", "exit 3"])
    status = _wait_state(cri, container_id, cri.pb.CONTAINER_EXITED)
    assert (status.exit_code, status.reason) == (3, "Error")


def test_stop_and_remove_of_an_unknown_container_succeed(cri: Any) -> None:
    unknown = "f" * 64
    cri.runtime.StopContainer(cri.pb.StopContainerRequest(container_id=unknown, timeout=1))
    cri.runtime.RemoveContainer(cri.pb.RemoveContainerRequest(container_id=unknown))


def test_logs_are_written_in_the_cri_format_at_log_directory_slash_log_path(
        cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(
        cri_image, ["sh", "-c", "echo out; echo err >&2; printf partial"])
    status = _wait_state(cri, container_id, cri.pb.CONTAINER_EXITED)
    path = Path(status.log_path)
    assert path.is_absolute() and path.parent.parent == cri.log_dir
    lines = path.read_text().splitlines()
    parsed = [CRI_LOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    entries = [(m.group(3), m.group(4), m.group(5)) for m in parsed if m]
    assert ("stdout", "F", "out") in entries
    assert ("stderr", "F", "err") in entries
    assert ("stdout", "P", "partial") in entries


def test_reopen_container_log_recreates_a_renamed_log_file(cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(
        cri_image, ["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    path = Path(_status(cri, container_id).log_path)
    deadline = time.monotonic() + 10
    while not (path.exists() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    rotated = path.with_name(path.name + ".1")
    path.rename(rotated)
    cri.runtime.ReopenContainerLog(cri.pb.ReopenContainerLogRequest(container_id=container_id))
    assert path.exists()
    size = rotated.stat().st_size
    time.sleep(0.5)
    assert rotated.stat().st_size == size
    assert path.stat().st_size > 0


def test_reopen_container_log_of_a_stopped_container_fails(cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(cri_image, ["true"])
    _wait_state(cri, container_id, cri.pb.CONTAINER_EXITED)
    with pytest.raises(grpc.RpcError) as err:
        cri.runtime.ReopenContainerLog(
            cri.pb.ReopenContainerLogRequest(container_id=container_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_exec_sync_returns_output_and_a_non_zero_exit_code(cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(cri_image)
    response = cri.exec(container_id, "sh", "-c", "echo hello; echo oops >&2; exit 7")
    assert (response.stdout, response.stderr, response.exit_code) == (b"hello\n", b"oops\n", 7)


@pytest.mark.parametrize("pid_mode", ["POD", "CONTAINER"], ids=["pod-pid", "own-pid"])
def test_exec_sync_timeout_fails_and_kills_the_process_tree(cri: Any, cri_image: str,
                                                            pid_mode: str) -> None:
    # Own PID namespace (the kubelet's default): orphans would go to the container's PID 1.
    pid = getattr(cri.pb, pid_mode)
    config = cri.pod_config()
    config.linux.security_context.namespace_options.pid = pid
    pod = cri.run_pod(config)
    options = cri.pb.LinuxContainerConfig()
    options.security_context.namespace_options.pid = pid
    _, container_id = cri.run_container(cri_image, pod=pod, linux=options)
    with pytest.raises(grpc.RpcError) as err:
        # sleep 602 is an orphan by then (its subshell exited): still in the exec's session.
        cri.exec(container_id, "sh", "-c", "(sleep 602 &); sleep 600 & sleep 601", timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ps = cri.exec(container_id, "ps", "-o", "args").stdout.decode()
    assert "sleep 60" not in ps, ps


def test_exec_sync_of_a_missing_command_fails_with_the_runtime_s_message(
        cri: Any, cri_image: str) -> None:
    _, container_id = cri.run_container(cri_image)
    with pytest.raises(grpc.RpcError) as err:
        cri.exec(container_id, "no-such-command")
    assert '"no-such-command": executable file not found' in (err.value.details() or "")
    assert cri.exec(container_id, "true").exit_code == 0


def test_list_containers_filters(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    pod_a, config_a = cri.run_pod()
    pod_b, config_b = cri.run_pod()
    a = cri.create_container(pod_a, config_a, cri.container_config(cri_image, labels={"x": "1"}))
    b = cri.create_container(pod_b, config_b, cri.container_config(cri_image, labels={"x": "2"}))
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=b))

    def ids(**filter_: Any) -> set[str]:
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(**filter_))
        return {c.id for c in cri.runtime.ListContainers(request).containers}

    assert ids() == {a, b}
    assert ids(id=a) == {a}
    assert ids(id=a[:12]) == {a}
    assert ids(pod_sandbox_id=pod_b) == {b}
    assert ids(label_selector={"x": "1"}) == {a}
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)) == {b}
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED)) == {a}


def test_create_container_in_an_unknown_sandbox_is_not_found(cri: Any, cri_image: str) -> None:
    cri.pull(cri_image)
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container("a" * 64, cri.pod_config(), cri.container_config(cri_image))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_create_container_of_an_unknown_image_is_not_found(cri: Any) -> None:
    sandbox_id, config = cri.run_pod()
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container(sandbox_id, config, cri.container_config("127.0.0.1:1/no/such:1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_container_names_are_reserved_and_a_failed_create_releases_its_name(
        cri: Any, cri_image: str) -> None:
    cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    config = cri.container_config(cri_image, name="web")
    cri.create_container(sandbox_id, sandbox_config, config)
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container(sandbox_id, sandbox_config, config)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # A create that fails (a relative mount destination) frees its name for the retry.
    retry = cri.container_config(cri_image, name="retry")
    retry.mounts.add(container_path="relative", host_path="/tmp")
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container(sandbox_id, sandbox_config, retry)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    del retry.mounts[:]
    cri.create_container(sandbox_id, sandbox_config, retry)


def test_create_container_without_a_name_is_invalid_argument(cri: Any, cri_image: str) -> None:
    cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    config = cri.container_config(cri_image)
    config.metadata.name = ""
    with pytest.raises(grpc.RpcError) as err:
        cri.create_container(sandbox_id, sandbox_config, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stats_have_timestamps_and_cpu_and_memory_usage(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    sandbox_id, container_id = cri.run_container(
        cri_image, ["sh", "-c", "while true; do :; done"])
    first = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=container_id)).stats
    time.sleep(0.5)
    second = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=container_id)).stats
    assert first.attributes.id == container_id
    assert second.cpu.timestamp > first.cpu.timestamp > 0
    assert second.memory.timestamp > 0
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.usage_nano_cores.value > 0
    assert second.memory.working_set_bytes.value > 0
    listed = cri.runtime.ListContainerStats(pb.ListContainerStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [container_id]
    pod = cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id)).stats
    assert pod.attributes.id == sandbox_id
    assert pod.linux.cpu.timestamp > 0 and pod.linux.memory.timestamp > 0
    assert [c.attributes.id for c in pod.linux.containers] == [container_id]
    pods = cri.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
    assert [p.attributes.id for p in pods] == [sandbox_id]


def test_pod_sandbox_stats_count_the_pods_traffic_on_eth0_and_its_processes(
        cri: Any, cri_image: str) -> None:
    pb = cri.pb
    sandbox_id, _ = cri.run_container(cri_image)
    ip = cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status.network.ip

    def network() -> Any:
        return cri.runtime.PodSandboxStats(
            pb.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id)).stats.linux.network

    before = network()
    for _ in range(3):  # a SYN in and a RST out each: nothing listens on port 9
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.settimeout(2)
            probe.connect((ip, 9))
    after = network()
    assert [i.name for i in after.interfaces] == ["eth0"]  # lo is left out
    assert after.default_interface.name == "eth0"
    rx, tx = after.default_interface.rx_bytes.value, after.default_interface.tx_bytes.value
    assert rx >= before.default_interface.rx_bytes.value + 3 * 40
    assert tx >= before.default_interface.tx_bytes.value + 3 * 40
    assert after.default_interface.rx_errors.value == 0
    # The container's sleep, from its cgroup.
    assert cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(
        pod_sandbox_id=sandbox_id)).stats.linux.process.process_count.value == 1


def test_update_container_resources_changes_the_memory_limit(cri: Any, cri_image: str) -> None:
    pb = cri.pb
    _, container_id = cri.run_container(cri_image)
    request = pb.UpdateContainerResourcesRequest(container_id=container_id)
    request.linux.memory_limit_in_bytes = 64 << 20
    cri.runtime.UpdateContainerResources(request)
    stats = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=container_id)).stats
    assert stats.memory.available_bytes.value <= 64 << 20
