"""Figures read from the running plugins at scrape time, as Prometheus metric families.

Each reader looks its plugin up when the scrape happens (the plugins it reads
are optional and may start after this one) and yields nothing when the
plugin is not running. A reader that fails is logged and left out: one broken
source must not empty the whole scrape.

Families (labels in brackets):

* ``moorage_build_info`` [version]
* ``moorage_plugin_init_seconds`` [plugin, type, status]
* ``moorage_events_subscribers``, ``moorage_events_published_total``,
  ``moorage_events_overflows_total``
* ``moorage_task_cpu_seconds_total``, ``moorage_task_memory_usage_bytes``,
  ``moorage_task_memory_limit_bytes``, ``moorage_task_pids``,
  ``moorage_task_pids_limit``, ``moorage_task_io_read_bytes_total``,
  ``moorage_task_io_write_bytes_total``, ``moorage_task_oom_kills_total``
  [namespace, container_id, runtime]
* ``moorage_content_blobs``, ``moorage_content_bytes`` [namespace] (records);
  ``moorage_content_store_blobs``, ``moorage_content_store_bytes`` (on disk,
  shared between namespaces); ``moorage_content_ingests`` [namespace]
* ``moorage_snapshots`` [snapshotter, namespace, kind]
* ``moorage_network_attachments`` [network]
* ``moorage_process_async_tasks``, ``moorage_process_threads``,
  ``moorage_process_open_fds``: the daemon's own, for leak checks
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from runtime.core.errors import MoorageError
from runtime.core.host import PluginSet
from runtime.plugins.content.api import NamespacedContent
from runtime.plugins.snapshots.api import SnapshotCounts

if TYPE_CHECKING:
    from runtime.api.tasks import TaskMetrics
    from runtime.plugins.metadata.api import Metadata
    from runtime.plugins.network.api import Network
    from runtime.plugins.runtime.api import Runtime

__all__ = ["read_all"]

log = logging.getLogger("moorage.metrics")

_TASK_LABELS = ["namespace", "container_id", "runtime"]
_LIVE = ("created", "running", "paused")
#: Tasks whose cgroups are read at once; each read is a worker thread.
_PARALLEL_TASKS = 8

Reader = Callable[[PluginSet], Awaitable[list[Metric]]]


async def build_info(plugins: PluginSet) -> list[Metric]:
    """The daemon's version."""
    import runtime

    info = InfoMetricFamily("moorage_build", "Moorage build information.")
    info.add_metric([], {"version": runtime.__version__})
    return [info]


async def plugin_figures(plugins: PluginSet) -> list[Metric]:
    """How long each plugin's init took, with its status."""
    family = GaugeMetricFamily("moorage_plugin_init_seconds",
                               "Seconds the plugin's init took at daemon start.",
                               labels=["plugin", "type", "status"])
    for name, record in plugins.records.items():
        family.add_metric([name, record.type, str(record.status)], record.init_seconds)
    return [family]


async def event_figures(plugins: PluginSet) -> list[Metric]:
    """Subscribers of the event exchange, events published, subscribers disconnected."""
    exchange = next(iter(plugins.by_type("events").values()), None)
    if exchange is None:
        return []
    stats = exchange.statistics()
    subscribers = GaugeMetricFamily("moorage_events_subscribers",
                                    "Event subscriptions currently registered.")
    subscribers.add_metric([], stats.subscribers)
    published = CounterMetricFamily("moorage_events_published",
                                    "Events published since the daemon started.")
    published.add_metric([], stats.published)
    overflowed = CounterMetricFamily(
        "moorage_events_overflows",
        "Subscribers disconnected because they read too slowly.")
    overflowed.add_metric([], stats.overflowed)
    return [subscribers, published, overflowed]


async def _namespaces(plugins: PluginSet) -> list[str]:
    metadata: Metadata | None = plugins.services.get("metadata.sqlite")
    if metadata is None:
        return ["default"]
    return [ns.name for ns in await metadata.namespaces.list()]


async def task_figures(plugins: PluginSet) -> list[Metric]:
    """CPU, memory, pids and IO of every live task, through each runtime's ``metrics``."""
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "cpu": CounterMetricFamily("moorage_task_cpu_seconds",
                                   "CPU time the task's cgroup used.", labels=_TASK_LABELS),
        "memory": GaugeMetricFamily("moorage_task_memory_usage_bytes",
                                    "Memory charged to the task's cgroup.", labels=_TASK_LABELS),
        "memory_limit": GaugeMetricFamily("moorage_task_memory_limit_bytes",
                                          "The task's memory limit (absent: unlimited).",
                                          labels=_TASK_LABELS),
        "pids": GaugeMetricFamily("moorage_task_pids", "Processes and threads of the task.",
                                  labels=_TASK_LABELS),
        "pids_limit": GaugeMetricFamily("moorage_task_pids_limit",
                                        "The task's pids limit (absent: unlimited).",
                                        labels=_TASK_LABELS),
        "io_read": CounterMetricFamily("moorage_task_io_read_bytes",
                                       "Bytes the task read from block devices.",
                                       labels=_TASK_LABELS),
        "io_write": CounterMetricFamily("moorage_task_io_write_bytes",
                                        "Bytes the task wrote to block devices.",
                                        labels=_TASK_LABELS),
        "oom": CounterMetricFamily("moorage_task_oom_kills",
                                   "Processes of the task killed by the OOM killer.",
                                   labels=_TASK_LABELS),
    }
    runtimes: dict[str, Runtime] = plugins.by_type("runtime")
    if not runtimes:
        return []
    wanted: list[tuple[Runtime, str, str]] = []
    for namespace in await _namespaces(plugins):
        for runtime in runtimes.values():
            for task in await runtime.list_tasks(namespace):
                if str(task.status) in _LIVE:
                    wanted.append((runtime, namespace, task.container_id))
    found: list[tuple[list[str], TaskMetrics]] = []
    limiter = anyio.CapacityLimiter(_PARALLEL_TASKS)

    async def read(runtime: Runtime, namespace: str, container_id: str) -> None:
        async with limiter:
            try:
                metrics = await runtime.metrics(namespace, container_id)
            except (MoorageError, OSError):
                return  # deleted or exited since it was listed
        found.append(([namespace, container_id, runtime.name], metrics))

    async with anyio.create_task_group() as tg:
        for item in wanted:
            tg.start_soon(read, *item)
    for labels, m in sorted(found, key=lambda item: item[0]):
        families["cpu"].add_metric(labels, m.cpu_usage_usec / 1e6)
        families["memory"].add_metric(labels, m.memory_usage_bytes)
        if m.memory_limit_bytes is not None:
            families["memory_limit"].add_metric(labels, m.memory_limit_bytes)
        families["pids"].add_metric(labels, m.pids_current)
        if m.pids_limit is not None:
            families["pids_limit"].add_metric(labels, m.pids_limit)
        families["io_read"].add_metric(labels, m.io_read_bytes)
        families["io_write"].add_metric(labels, m.io_write_bytes)
        families["oom"].add_metric(labels, m.oom_kills)
    return list(families.values())


async def content_figures(plugins: PluginSet) -> list[Metric]:
    """Blob records and bytes per namespace, blobs on disk, ingests in progress."""
    content: NamespacedContent | None = plugins.services.get("content.local")
    if content is None:
        return []
    usage = await content.usage()
    blobs = GaugeMetricFamily("moorage_content_blobs", "Blob records of the namespace.",
                              labels=["namespace"])
    size = GaugeMetricFamily("moorage_content_bytes", "Bytes of the namespace's blobs.",
                             labels=["namespace"])
    for namespace, count in sorted(usage.blobs.items()):
        blobs.add_metric([namespace], count)
        size.add_metric([namespace], usage.bytes.get(namespace, 0))
    pending = GaugeMetricFamily("moorage_content_ingests", "Ingests in progress.",
                                labels=["namespace"])
    for namespace, count in sorted(usage.ingests.items()):
        pending.add_metric([namespace], count)
    store_blobs = GaugeMetricFamily("moorage_content_store_blobs",
                                    "Blobs on disk, each counted once over namespaces.")
    store_blobs.add_metric([], usage.stored_blobs)
    store_bytes = GaugeMetricFamily("moorage_content_store_bytes", "Bytes of the blobs on disk.")
    store_bytes.add_metric([], usage.stored_bytes)
    return [blobs, size, pending, store_blobs, store_bytes]


async def snapshot_figures(plugins: PluginSet) -> list[Metric]:
    """Snapshots per snapshotter, namespace and kind (active, view, committed)."""
    snapshots: SnapshotCounts | None = plugins.services.get("service.snapshots")
    if snapshots is None:
        return []
    family = GaugeMetricFamily("moorage_snapshots", "Snapshots recorded.",
                               labels=["snapshotter", "namespace", "kind"])
    for c in await snapshots.counts():
        family.add_metric([c.snapshotter, c.namespace, str(c.kind)], c.count)
    return [family]


async def network_figures(plugins: PluginSet) -> list[Metric]:
    """Containers attached per network."""
    network: Network | None = next(iter(plugins.by_type("network").values()), None)
    if network is None:
        return []
    counts: dict[str, int] = {}
    for attachment in await network.attachments():
        counts[attachment.network] = counts.get(attachment.network, 0) + 1
    family = GaugeMetricFamily("moorage_network_attachments", "Containers attached.",
                               labels=["network"])
    for name, count in sorted(counts.items()):
        family.add_metric([name], count)
    return [family]


async def process_figures(plugins: PluginSet) -> list[Metric]:
    """The daemon's asyncio tasks, threads and open descriptors, counted now.

    What a leak shows up in: a stream, request or watch that ends must take
    its tasks, worker threads and sockets with it. The count of tasks
    includes the scrape's own; on a loop other than asyncio's it is left out.
    """
    families: list[Metric] = []
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # no asyncio loop running (trio)
        tasks = -1
    if tasks >= 0:
        family = GaugeMetricFamily("moorage_process_async_tasks",
                                   "asyncio tasks alive in the daemon (this scrape's included).")
        family.add_metric([], tasks)
        families.append(family)
    for name, directory, what in (("threads", "/proc/self/task", "Threads of the daemon."),
                                  ("open_fds", "/proc/self/fd", "Open file descriptors.")):
        try:
            count = len(os.listdir(directory))
        except OSError:
            continue
        family = GaugeMetricFamily(f"moorage_process_{name}", what)
        family.add_metric([], count)
        families.append(family)
    return families


READERS: tuple[Reader, ...] = (
    build_info, plugin_figures, event_figures, task_figures, content_figures,
    snapshot_figures, network_figures, process_figures,
)  # fmt: skip


async def read_all(plugins: PluginSet) -> list[Metric]:
    """Every reader's families; a failing reader is logged and skipped."""
    families: list[Metric] = []
    for reader in READERS:
        try:
            families.extend(await reader(plugins))
        except Exception:
            log.warning("metrics: %s failed", reader.__name__, exc_info=True)
    return families
