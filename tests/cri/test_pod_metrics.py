"""Pod metrics (critest's "PodSandbox metrics": descriptors; listing pod metrics).

ListMetricDescriptors names cAdvisor's series, each with a help text and label
keys; ListPodSandboxMetrics gives every series of a running container, labelled
with as many values as its descriptor has keys, and the figures are the
container's own: its cgroup, processes, root filesystem and pod network.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable
from typing import Any

import pytest

pytestmark = pytest.mark.root

_MIB = 1 << 20

#: Series critest expects values of (its list less those no runtime implements yet
#: and those whose values it takes as optional).
_CRITEST_SERIES = (
    "container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total", "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total", "container_cpu_user_seconds_total",
    "container_file_descriptors", "container_fs_inodes_free", "container_fs_inodes_total",
    "container_fs_limit_bytes", "container_fs_usage_bytes", "container_last_seen",
    "container_memory_cache", "container_memory_failcnt", "container_memory_failures_total",
    "container_memory_kernel_usage", "container_memory_mapped_file",
    "container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap",
    "container_memory_usage_bytes", "container_memory_working_set_bytes",
    "container_network_receive_bytes_total", "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total", "container_network_receive_packets_total",
    "container_network_transmit_bytes_total", "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total", "container_oom_events_total",
    "container_processes", "container_sockets", "container_spec_cpu_period",
    "container_spec_cpu_shares", "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes", "container_start_time_seconds",
    "container_threads", "container_threads_max",
)  # fmt: skip
_OPTIONAL = ("container_blkio_device_usage_total", "container_fs_reads_bytes_total",
             "container_fs_reads_total", "container_fs_writes_bytes_total",
             "container_fs_writes_total")


def _descriptors(cri: Any) -> dict[str, Any]:
    response = cri.runtime.ListMetricDescriptors(cri.pb.ListMetricDescriptorsRequest())
    return {d.name: d for d in response.descriptors}


def _pod_metrics(cri: Any, sandbox_id: str) -> Any | None:
    response = cri.runtime.ListPodSandboxMetrics(cri.pb.ListPodSandboxMetricsRequest())
    return next((m for m in response.pod_metrics if m.pod_sandbox_id == sandbox_id), None)


def _by_name(metrics: Iterable[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for metric in metrics:
        found.setdefault(metric.name, []).append(metric)
    return found


def test_list_metric_descriptors_names_the_cadvisor_series_with_help_and_label_keys(
        cri: Any) -> None:
    descriptors = _descriptors(cri)
    assert set(_CRITEST_SERIES) | set(_OPTIONAL) <= descriptors.keys()
    for descriptor in descriptors.values():
        assert descriptor.help, descriptor.name
        assert descriptor.label_keys[:6] == ["container", "id", "image", "name", "namespace",
                                             "pod"]
    assert list(descriptors["container_network_receive_bytes_total"].label_keys)[6:] == [
        "interface"]


def test_list_pod_sandbox_metrics_reports_the_containers_own_figures(
        cri: Any, cri_image: str) -> None:
    pb = cri.pb
    resources = pb.LinuxContainerResources(
        cpu_period=100000, cpu_quota=20000, cpu_shares=512,
        memory_limit_in_bytes=64 * _MIB, memory_swap_limit_in_bytes=64 * _MIB)
    started = time.time()
    sandbox_id, container_id = cri.run_container(
        cri_image, ["sleep", "3600"], linux=pb.LinuxContainerConfig(resources=resources))
    # 2 MiB written in the root filesystem, a second process, and traffic to the pod.
    assert cri.exec(container_id, "sh", "-c",
                    "head -c 2097152 /dev/zero > /big && sync").exit_code == 0
    cri.runtime.ExecSync(pb.ExecSyncRequest(
        container_id=container_id, cmd=["sh", "-c", "sleep 3600 >/dev/null 2>&1 &"], timeout=10))
    ip = cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status.network.ip
    for _ in range(3):  # each a SYN in and a RST out: nothing listens on port 9
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.settimeout(2)
            probe.connect((ip, 9))

    descriptors = _descriptors(cri)
    pod = _pod_metrics(cri, sandbox_id)
    assert pod is not None
    [container] = pod.container_metrics
    assert container.container_id == container_id
    series = _by_name([*pod.metrics, *container.metrics])
    assert set(_CRITEST_SERIES) <= series.keys()
    for name, samples in series.items():
        for sample in samples:
            assert len(sample.label_values) == len(descriptors[name].label_keys), name
            counter = ((name.endswith("_total") and name != "container_fs_inodes_total")
                       or name == "container_memory_failcnt")
            assert sample.metric_type == (pb.COUNTER if counter else pb.GAUGE), name

    def value(name: str, *extra: str) -> int:
        [sample] = [s for s in series[name] if list(s.label_values)[6:] == list(extra)]
        return int(sample.value.value)

    labels = list(series["container_memory_usage_bytes"][0].label_values)
    status = cri.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=container_id)).status
    assert labels[0] == status.metadata.name
    assert labels[1].endswith(container_id)  # the cgroup
    assert labels[3] == container_id
    pod_config = cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status.metadata
    assert labels[4:6] == [pod_config.namespace, pod_config.name]

    assert value("container_spec_cpu_period") == 100000
    assert value("container_spec_cpu_shares") == 512
    assert value("container_spec_memory_limit_bytes") == 64 * _MIB
    assert value("container_spec_memory_swap_limit_bytes") == 64 * _MIB
    assert value("container_processes") == 2
    assert value("container_threads") >= 2
    assert value("container_file_descriptors") >= 3
    assert 0 < value("container_memory_working_set_bytes") <= value(
        "container_memory_usage_bytes") <= 64 * _MIB
    assert value("container_memory_max_usage_bytes") >= value("container_memory_usage_bytes")
    # The written file is page cache charged to the container, and in its upper layer.
    assert value("container_memory_cache") >= 2 * _MIB
    assert value("container_fs_usage_bytes", "") >= 2 * _MIB
    assert value("container_fs_limit_bytes", "") > value("container_fs_usage_bytes", "")
    assert 0 < value("container_fs_inodes_free", "") <= value("container_fs_inodes_total", "")
    assert value("container_oom_events_total") == 0
    assert int(started) - 1 <= value("container_start_time_seconds") <= time.time()
    assert value("container_last_seen") >= value("container_start_time_seconds")
    # The pod's network: the probes came in on eth0 and were answered.
    net = _by_name(pod.metrics)
    eth0 = [s for s in net["container_network_receive_packets_total"]
            if list(s.label_values)[6:] == ["eth0"]]
    assert eth0 and eth0[0].value.value >= 3
    assert list(eth0[0].label_values)[:1] == ["POD"]
    assert any(s.value.value >= 3 for s in net["container_network_transmit_packets_total"])


def test_cpu_seconds_follow_the_cgroup(cri: Any, cri_image: str) -> None:
    # About a second and a half of CPU (the loop is busybox's shell).
    _, container_id = cri.run_container(cri_image, ["sleep", "3600"])
    cri.exec(container_id, "sh", "-c", "i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done",
             timeout=60)
    stats = cri.runtime.ContainerStats(cri.pb.ContainerStatsRequest(container_id=container_id))
    used_ns = stats.stats.cpu.usage_core_nano_seconds.value
    response = cri.runtime.ListPodSandboxMetrics(cri.pb.ListPodSandboxMetricsRequest())
    [container] = [c for p in response.pod_metrics for c in p.container_metrics
                   if c.container_id == container_id]
    series = {m.name: int(m.value.value) for m in container.metrics}
    assert series["container_cpu_usage_seconds_total"] in (used_ns // 10**9,
                                                           used_ns // 10**9 + 1)
    assert series["container_cpu_user_seconds_total"] + series[
        "container_cpu_system_seconds_total"] <= series["container_cpu_usage_seconds_total"] + 1


def test_a_stopped_pod_has_no_metrics(cri: Any, cri_image: str) -> None:
    sandbox_id, _ = cri.run_container(cri_image, ["sleep", "3600"])
    assert _pod_metrics(cri, sandbox_id) is not None
    cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert _pod_metrics(cri, sandbox_id) is None
