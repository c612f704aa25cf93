"""CRI statistics: ContainerStats, PodSandboxStats and their lists (cpu rates between samples)."""

from __future__ import annotations

import contextlib

import anyio.to_thread
import msgspec

from runtime.api.containers import Container
from runtime.api.tasks import TaskMetrics
from runtime.core.errors import MoorageError
from runtime.plugins.cri.messages import pb
from runtime.plugins.cri.netdev import read_net_dev
from runtime.plugins.cri.records import (
    EXTENSION,
    ContainerRecord,
    PodRecords,
    SandboxRecord,
    StatsSample,
    labels_match,
    now_ns,
)

__all__ = ["PodStats"]


class PodStats(PodRecords):
    """The statistics RPCs of the CRI RuntimeService."""

    async def container_stats(self, container_id: str) -> pb.ContainerStats:
        """ContainerStats of one container."""
        container_id = await self._resolve_id(container_id, "container")
        container, record = await self._record(container_id, "container")
        return await self._stats_of(container, record)

    async def _stats_of(self, container: Container, record: ContainerRecord) -> pb.ContainerStats:
        return (await self._stats_and_metrics(container, record))[0]

    async def _stats_and_metrics(self, container: Container, record: ContainerRecord
                                 ) -> tuple[pb.ContainerStats, TaskMetrics | None]:
        """The container's stats, and the cgroup figures they came from (``None``: no task)."""
        config = pb.ContainerConfig()
        from google.protobuf import json_format
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        stats = pb.ContainerStats()
        stats.attributes.id = container.id
        stats.attributes.metadata.CopyFrom(config.metadata)
        stats.attributes.labels.update(config.labels)
        stats.attributes.annotations.update(config.annotations)
        metrics = await self._fill_usage(container.id, stats.cpu, stats.memory)
        stats.writable_layer.timestamp = now_ns()
        stats.writable_layer.fs_id.mountpoint = container.snapshotter
        with contextlib.suppress(MoorageError):
            usage = await self.snapshots.get(self.snapshotter).usage(self.namespace, container.id)
            stats.writable_layer.used_bytes.value = usage.size
            stats.writable_layer.inodes_used.value = usage.inodes
        return stats, metrics

    async def _fill_usage(self, id_: str, cpu: pb.CpuUsage, memory: pb.MemoryUsage
                          ) -> TaskMetrics | None:
        runtime = self._runtime_of(id_)
        now = now_ns()
        cpu.timestamp = memory.timestamp = now
        if runtime is None:
            return None
        try:
            metrics = await runtime.metrics(self.namespace, id_)
        except MoorageError:
            return None
        usage_ns = metrics.cpu_usage_usec * 1000
        cpu.usage_core_nano_seconds.value = usage_ns
        earlier = self._stats.get(id_)
        if earlier is not None and now > earlier.timestamp and usage_ns >= earlier.usage_ns:
            cpu.usage_nano_cores.value = int((usage_ns - earlier.usage_ns) * 1e9
                                             / (now - earlier.timestamp))
        self._stats[id_] = StatsSample(now, usage_ns)
        memory.usage_bytes.value = metrics.memory_usage_bytes
        memory.working_set_bytes.value = metrics.memory_usage_bytes
        if metrics.memory_limit_bytes:
            memory.available_bytes.value = max(
                metrics.memory_limit_bytes - metrics.memory_usage_bytes, 0)
        return metrics

    async def list_container_stats(self, filter_: pb.ContainerStatsFilter | None
                                   ) -> list[pb.ContainerStats]:
        """ListContainerStats with its filters."""
        found = []
        for container in await self._list_records("container"):
            record = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
            if filter_ is not None:
                if filter_.id and not container.id.startswith(filter_.id):
                    continue
                if (filter_.pod_sandbox_id
                        and not record.sandbox_id.startswith(filter_.pod_sandbox_id)):
                    continue
                if not labels_match(container.labels, filter_.label_selector):
                    continue
            found.append(await self._stats_of(container, record))
        return found

    async def sandbox_stats(self, sandbox_id: str) -> pb.PodSandboxStats:
        """PodSandboxStats: the pod's infra cgroup plus its containers."""
        sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
        _, record = await self._record(sandbox_id, "sandbox")
        return await self._sandbox_stats_of(record)

    async def _sandbox_stats_of(self, record: SandboxRecord) -> pb.PodSandboxStats:
        config = self._sandbox_config(record)
        stats = pb.PodSandboxStats()
        stats.attributes.id = record.id
        stats.attributes.metadata.CopyFrom(config.metadata)
        stats.attributes.labels.update(config.labels)
        stats.attributes.annotations.update(config.annotations)
        linux = stats.linux
        await self._fill_usage(record.id, linux.cpu, linux.memory)
        procs = 0
        for container in await self._containers_of(record.id):
            crecord = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
            cstats, metrics = await self._stats_and_metrics(container, crecord)
            linux.containers.append(cstats)
            linux.cpu.usage_core_nano_seconds.value += cstats.cpu.usage_core_nano_seconds.value
            linux.cpu.usage_nano_cores.value += cstats.cpu.usage_nano_cores.value
            linux.memory.working_set_bytes.value += cstats.memory.working_set_bytes.value
            linux.memory.usage_bytes.value += cstats.memory.usage_bytes.value
            # The cgroup's processes, read with its other figures (no runc ps).
            procs += len(metrics.pids) if metrics is not None else 0
        linux.process.timestamp = now_ns()
        linux.process.process_count.value = procs
        linux.network.timestamp = now_ns()
        if record.netns:  # a host-network pod has none of its own
            with contextlib.suppress(OSError):
                interfaces = await anyio.to_thread.run_sync(read_net_dev, record.netns)
                for counters in interfaces:
                    usage = linux.network.interfaces.add(name=counters.name)
                    usage.rx_bytes.value = counters.rx_bytes
                    usage.rx_errors.value = counters.rx_errors
                    usage.tx_bytes.value = counters.tx_bytes
                    usage.tx_errors.value = counters.tx_errors
                # The kubelet's "default" interface is eth0, the one CNI made.
                default = next((i for i in linux.network.interfaces if i.name == "eth0"),
                               linux.network.interfaces[0] if interfaces else None)
                if default is not None:
                    linux.network.default_interface.CopyFrom(default)
        return stats

    async def list_sandbox_stats(self, filter_: pb.PodSandboxStatsFilter | None
                                 ) -> list[pb.PodSandboxStats]:
        """ListPodSandboxStats with its filters."""
        found = []
        for container in await self._list_records("sandbox"):
            record = msgspec.convert(container.extensions.get(EXTENSION, {}), SandboxRecord)
            if filter_ is not None:
                if filter_.id and not record.id.startswith(filter_.id):
                    continue
                if not labels_match(self._sandbox_config(record).labels,
                                     filter_.label_selector):
                    continue
            found.append(await self._sandbox_stats_of(record))
        return found

