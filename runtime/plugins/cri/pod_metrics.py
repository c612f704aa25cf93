"""CRI pod metrics: ListMetricDescriptors and ListPodSandboxMetrics, in cAdvisor's names.

The kubelet's CRI metrics collector (``PodAndContainerStatsFromCRI``) serves these
as its ``/metrics/cadvisor`` series: a descriptor becomes a Prometheus metric with
its label keys, a :class:`pb.Metric` one sample whose label values come in the
same order, its value taken as is. Values are unsigned integers on the wire, so
the ``*_seconds*`` series count whole seconds, as CRI-O reports them.

Every container series carries :data:`CONTAINER_LABELS`; a few add their own keys
after those (a network interface, a fault type, a device). Figures come from the
container's cgroup (:class:`~runtime.api.tasks.TaskMetrics`), its processes in
``/proc``, its root filesystem and the pod's network namespace
(``/proc/net/dev`` read inside it). The ``container_spec_*`` series are what the
container was created with (and updated to), as cAdvisor's are the spec's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import anyio.to_thread
import msgspec

from runtime.api.containers import Container
from runtime.api.tasks import TaskMetrics, TaskState
from runtime.core.errors import MoorageError
from runtime.plugins.cri.messages import pb
from runtime.plugins.cri.netdev import InterfaceCounters, read_net_dev
from runtime.plugins.cri.records import (
    EXTENSION,
    ContainerRecord,
    PodRecords,
    SandboxRecord,
    now_ns,
)

__all__ = ["CONTAINER_LABELS", "DESCRIPTORS", "PodMetrics"]

#: Label keys of every series: the container's name in the pod, its cgroup, its image,
#: its id, and the pod's namespace and name (``POD`` and the pod id for pod series).
CONTAINER_LABELS = ("container", "id", "image", "name", "namespace", "pod")

#: CRI's MetricType values (COUNTER = 0, GAUGE = 1), as numbers: reading them from ``pb``
#: here would load protobuf at the daemon's start, which an idle cri.v1 must not
#: (tests/cri/test_lazy_grpc.py; checked against ``pb`` by tests/cri/test_stubs.py).
_COUNTER, _GAUGE = 0, 1
_USEC, _NSEC = 1_000_000, 1_000_000_000


class _Series(msgspec.Struct, frozen=True):
    name: str
    help: str
    type: int
    extra: tuple[str, ...] = ()


_NET = ("interface",)
#: Every series this runtime reports, in cAdvisor's names and meanings.
DESCRIPTORS: tuple[_Series, ...] = (
    _Series("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.",
            _COUNTER),
    _Series("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.",
            _COUNTER),
    _Series("container_cpu_system_seconds_total",
            "Cumulative system cpu time consumed in seconds.", _COUNTER),
    _Series("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.",
            _COUNTER),
    _Series("container_cpu_cfs_throttled_periods_total",
            "Number of throttled period intervals.", _COUNTER),
    _Series("container_cpu_cfs_throttled_seconds_total",
            "Total time duration the container has been throttled.", _COUNTER),
    _Series("container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was "
            "accessed.", _GAUGE),
    _Series("container_memory_working_set_bytes", "Current working set in bytes.", _GAUGE),
    _Series("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.",
            _GAUGE),
    _Series("container_memory_cache", "Number of bytes of page cache memory.", _GAUGE),
    _Series("container_memory_rss", "Size of RSS in bytes.", _GAUGE),
    _Series("container_memory_mapped_file", "Size of memory mapped files in bytes.", _GAUGE),
    _Series("container_memory_swap", "Container swap usage in bytes.", _GAUGE),
    _Series("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.",
            _GAUGE),
    _Series("container_memory_failcnt", "Number of memory usage hits limits.", _COUNTER),
    _Series("container_memory_failures_total", "Cumulative count of memory allocation "
            "failures.", _COUNTER, ("failure_type", "scope")),
    _Series("container_oom_events_total", "Count of out of memory events observed for the "
            "container.", _COUNTER),
    _Series("container_processes", "Number of processes running inside the container.",
            _GAUGE),
    _Series("container_threads", "Number of threads running inside the container.", _GAUGE),
    _Series("container_threads_max", "Maximum number of threads allowed inside the container, "
            "0 for unlimited.", _GAUGE),
    _Series("container_file_descriptors", "Number of open file descriptors for the "
            "container.", _GAUGE),
    _Series("container_sockets", "Number of open sockets for the container.", _GAUGE),
    _Series("container_fs_usage_bytes", "Number of bytes that are consumed by the container "
            "on this filesystem.", _GAUGE, ("device",)),
    _Series("container_fs_limit_bytes", "Number of bytes that can be consumed by the "
            "container on this filesystem.", _GAUGE, ("device",)),
    _Series("container_fs_inodes_total", "Number of Inodes.", _GAUGE, ("device",)),
    _Series("container_fs_inodes_free", "Number of available Inodes.", _GAUGE, ("device",)),
    _Series("container_fs_reads_bytes_total", "Cumulative count of bytes read.", _COUNTER,
            ("device",)),
    _Series("container_fs_writes_bytes_total", "Cumulative count of bytes written.", _COUNTER,
            ("device",)),
    _Series("container_fs_reads_total", "Cumulative count of reads completed.", _COUNTER,
            ("device",)),
    _Series("container_fs_writes_total", "Cumulative count of writes completed.", _COUNTER,
            ("device",)),
    # Per-device figures: not reported (the fs_* series carry the totals, device "").
    _Series("container_blkio_device_usage_total", "Blkio device bytes usage.", _COUNTER,
            ("device", "major", "minor", "operation")),
    _Series("container_spec_cpu_period", "CPU period of the container.", _GAUGE),
    _Series("container_spec_cpu_shares", "CPU share of the container.", _GAUGE),
    _Series("container_spec_memory_limit_bytes", "Memory limit for the container.", _GAUGE),
    _Series("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.",
            _GAUGE),
    _Series("container_start_time_seconds", "Start time of the container since unix epoch in "
            "seconds.", _GAUGE),
    _Series("container_last_seen", "Last time a container was seen by the exporter.", _GAUGE),
    _Series("container_network_receive_bytes_total", "Cumulative count of bytes received.",
            _COUNTER, _NET),
    _Series("container_network_receive_packets_total", "Cumulative count of packets "
            "received.", _COUNTER, _NET),
    _Series("container_network_receive_packets_dropped_total", "Cumulative count of packets "
            "dropped while receiving.", _COUNTER, _NET),
    _Series("container_network_receive_errors_total", "Cumulative count of errors encountered "
            "while receiving.", _COUNTER, _NET),
    _Series("container_network_transmit_bytes_total", "Cumulative count of bytes "
            "transmitted.", _COUNTER, _NET),
    _Series("container_network_transmit_packets_total", "Cumulative count of packets "
            "transmitted.", _COUNTER, _NET),
    _Series("container_network_transmit_packets_dropped_total", "Cumulative count of packets "
            "dropped while transmitting.", _COUNTER, _NET),
    _Series("container_network_transmit_errors_total", "Cumulative count of errors "
            "encountered while transmitting.", _COUNTER, _NET),
)
_TYPES = {s.name: s.type for s in DESCRIPTORS}


def _open_files(pids: Iterable[int]) -> tuple[int, int]:
    """File descriptors and, of them, sockets open in ``pids`` (gone ones count nothing)."""
    fds = sockets = 0
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        fds += len(names)
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                    sockets += 1
    return fds, sockets


class _Samples(msgspec.Struct):
    """The samples of one container (or the pod), labelled alike."""

    labels: list[str]
    timestamp: int
    out: list[pb.Metric]

    def add(self, name: str, value: int, *extra: str) -> None:
        metric = pb.Metric(name=name, timestamp=self.timestamp,
                           metric_type=_TYPES[name],  # type: ignore[arg-type]
                           label_values=[*self.labels, *extra])
        metric.value.value = max(int(value), 0)
        self.out.append(metric)


def _add_task_metrics(samples: _Samples, m: TaskMetrics) -> None:
    add = samples.add
    add("container_cpu_usage_seconds_total", m.cpu_usage_usec // _USEC)
    add("container_cpu_user_seconds_total", m.cpu_user_usec // _USEC)
    add("container_cpu_system_seconds_total", m.cpu_system_usec // _USEC)
    add("container_cpu_cfs_periods_total", m.cpu_periods)
    add("container_cpu_cfs_throttled_periods_total", m.cpu_throttled_periods)
    add("container_cpu_cfs_throttled_seconds_total", m.cpu_throttled_usec // _USEC)
    add("container_memory_usage_bytes", m.memory_usage_bytes)
    # cAdvisor's working set: what the kernel could not reclaim first.
    add("container_memory_working_set_bytes",
        m.memory_usage_bytes - min(m.memory_inactive_file_bytes, m.memory_usage_bytes))
    add("container_memory_max_usage_bytes", m.memory_max_usage_bytes)
    add("container_memory_cache", m.memory_cache_bytes)
    add("container_memory_rss", m.memory_rss_bytes)
    add("container_memory_mapped_file", m.memory_mapped_file_bytes)
    add("container_memory_swap", m.memory_swap_bytes)
    add("container_memory_kernel_usage", m.memory_kernel_bytes)
    add("container_memory_failcnt", m.memory_failcnt)
    add("container_memory_failures_total", m.memory_pgfault, "pgfault", "container")
    add("container_memory_failures_total", m.memory_pgmajfault, "pgmajfault", "container")
    add("container_oom_events_total", m.oom_kills)
    add("container_threads", m.pids_current)
    add("container_threads_max", m.pids_limit or 0)
    add("container_fs_reads_bytes_total", m.io_read_bytes, "")
    add("container_fs_writes_bytes_total", m.io_write_bytes, "")
    add("container_fs_reads_total", m.io_reads, "")
    add("container_fs_writes_total", m.io_writes, "")


def _add_network(samples: _Samples, interfaces: list[InterfaceCounters]) -> None:
    for i in interfaces:
        for name, value in (
                ("container_network_receive_bytes_total", i.rx_bytes),
                ("container_network_receive_packets_total", i.rx_packets),
                ("container_network_receive_packets_dropped_total", i.rx_dropped),
                ("container_network_receive_errors_total", i.rx_errors),
                ("container_network_transmit_bytes_total", i.tx_bytes),
                ("container_network_transmit_packets_total", i.tx_packets),
                ("container_network_transmit_packets_dropped_total", i.tx_dropped),
                ("container_network_transmit_errors_total", i.tx_errors)):
            samples.add(name, value, i.name)


def _add_rootfs(samples: _Samples, rootfs: Path) -> None:
    """Capacity and inodes of the filesystem the container writes its root to."""
    try:
        st = os.statvfs(rootfs)
    except OSError:
        return
    samples.add("container_fs_limit_bytes", st.f_blocks * st.f_frsize, "")
    samples.add("container_fs_inodes_total", st.f_files, "")
    samples.add("container_fs_inodes_free", st.f_ffree, "")


class PodMetrics(PodRecords):
    """ListMetricDescriptors and ListPodSandboxMetrics of the CRI RuntimeService."""

    def metric_descriptors(self) -> list[pb.MetricDescriptor]:
        """Every series :meth:`list_pod_metrics` reports, with its label keys."""
        return [pb.MetricDescriptor(name=s.name, help=s.help,
                                    label_keys=[*CONTAINER_LABELS, *s.extra])
                for s in DESCRIPTORS]

    async def list_pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        """The metrics of every pod not stopped, and of its containers that have a task."""
        found = []
        for sandbox in await self._list_records("sandbox"):
            record = msgspec.convert(sandbox.extensions.get(EXTENSION, {}), SandboxRecord)
            if record.stopped:
                continue
            config = self._sandbox_config(record)
            pod = pb.PodSandboxMetrics(pod_sandbox_id=record.id)
            now = now_ns()
            labels = ["POD", config.linux.cgroup_parent, "", record.id,
                      config.metadata.namespace, config.metadata.name]
            pod_samples = _Samples(labels, now, [])
            if record.netns:
                with contextlib.suppress(OSError):
                    _add_network(pod_samples, await anyio.to_thread.run_sync(
                        read_net_dev, record.netns))
            pod.metrics.extend(pod_samples.out)
            for container in await self._containers_of(record.id):
                metrics = await self._container_metrics(container, config)
                if metrics is not None:
                    pod.container_metrics.append(metrics)
            found.append(pod)
        return found

    async def _container_metrics(self, container: Container, pod: pb.PodSandboxConfig
                                 ) -> pb.ContainerMetrics | None:
        from google.protobuf import json_format

        runtime = self._runtime_of(container.id)
        if runtime is None:
            return None
        try:
            task: TaskState = await runtime.state(self.namespace, container.id)
            usage = await runtime.metrics(self.namespace, container.id)
        except MoorageError:
            return None  # no task, or it went meanwhile
        record = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
        config = pb.ContainerConfig()
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        cgroup = str(container.spec.get("linux", {}).get("cgroupsPath", ""))
        now = now_ns()
        samples = _Samples([config.metadata.name, cgroup, record.image_name, container.id,
                            pod.metadata.namespace, pod.metadata.name], now, [])
        _add_task_metrics(samples, usage)
        fds, sockets = await anyio.to_thread.run_sync(_open_files, usage.pids)
        samples.add("container_processes", len(usage.pids))
        samples.add("container_file_descriptors", fds)
        samples.add("container_sockets", sockets)
        with contextlib.suppress(MoorageError):
            used = await self.snapshots.get(self.snapshotter).usage(self.namespace, container.id)
            samples.add("container_fs_usage_bytes", used.size, "")
        if task.bundle:
            await anyio.to_thread.run_sync(_add_rootfs, samples, Path(task.bundle) / "rootfs")
        resources = config.linux.resources
        # Unset, the cgroup keeps the kernel's defaults (CFS period 100 ms, 1024 shares).
        samples.add("container_spec_cpu_period", resources.cpu_period or 100_000)
        samples.add("container_spec_cpu_shares", resources.cpu_shares or 1024)
        samples.add("container_spec_memory_limit_bytes", resources.memory_limit_in_bytes)
        samples.add("container_spec_memory_swap_limit_bytes",
                    resources.memory_swap_limit_in_bytes)
        samples.add("container_start_time_seconds", record.started_at // _NSEC)
        samples.add("container_last_seen", now // _NSEC)
        return pb.ContainerMetrics(container_id=container.id, metrics=samples.out)
