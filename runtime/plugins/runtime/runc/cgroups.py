"""Task metrics and OOM counts from cgroup files, on v1, v2 and hybrid hosts.

Hierarchies are found in ``/proc/self/mountinfo``. An absolute ``cgroupsPath``
lives at the same path under every hierarchy, as runc places it. On a hybrid
host (v1 controllers plus a v2 tree, often at ``/sys/fs/cgroup/unified``) each
controller is read from its v1 hierarchy, and from the v2 tree only when v1
lacks it; so one code path serves all three layouts.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from runtime.api.tasks import TaskMetrics

__all__ = [
    "CgroupPaths",
    "OomNotifier",
    "find_paths",
    "oom_notifier",
    "read_metrics",
    "remove_empty",
    "total_oom_kills",
]

# Values at or above this in v1 limit files mean "no limit" (page-rounded INT64_MAX).
_V1_UNLIMITED = 1 << 62


class CgroupPaths(msgspec.Struct):
    """Where each controller of one cgroup lives.

    Attributes:
        mode: ``v1``, ``v2`` or ``hybrid``.
        v1: Controller name to the cgroup's directory in its v1 hierarchy.
        v2: The cgroup's directory in the v2 tree, if there is one.
        v2_controllers: Controllers the v2 tree offers.
    """

    mode: str
    v1: dict[str, Path] = msgspec.field(default_factory=dict)
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()

    def all_dirs(self) -> list[Path]:
        """Every directory of the cgroup, v1 hierarchies first."""
        dirs = list(dict.fromkeys(self.v1.values()))
        if self.v2 is not None:
            dirs.append(self.v2)
        return dirs


def _mounts() -> list[tuple[str, str, set[str]]]:
    """``(fstype, mountpoint, options)`` of every cgroup mount."""
    found: list[tuple[str, str, set[str]]] = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                continue
            mountpoint = fields[4].replace("\\040", " ")
            found.append((rfields[0], mountpoint, set(rfields[2].split(","))))
    return found


def find_paths(cgroups_path: str) -> CgroupPaths:
    """The directories of the cgroup ``cgroups_path`` (absolute, as in the OCI spec)."""
    inner = cgroups_path.lstrip("/")
    v1: dict[str, Path] = {}
    v2: Path | None = None
    controllers: frozenset[str] = frozenset()
    for fstype, mountpoint, options in _mounts():
        if fstype == "cgroup2":
            v2 = Path(mountpoint) / inner
            try:
                controllers = frozenset(
                    (Path(mountpoint) / "cgroup.controllers").read_text().split())
            except OSError:
                controllers = frozenset()
        else:
            for option in options:
                if option in ("cpu", "cpuacct", "memory", "pids", "freezer", "cpuset", "blkio",
                              "devices", "hugetlb", "net_cls", "net_prio", "perf_event", "rdma"):
                    v1[option] = Path(mountpoint) / inner
    mode = "v2" if not v1 else ("hybrid" if v2 is not None else "v1")
    return CgroupPaths(mode=mode, v1=v1, v2=v2, v2_controllers=controllers)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None or not text.lstrip("-").isdigit():
        return None
    return int(text)


def _keyed(path: Path) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.events``, ``memory.oom_control``)."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _limit(text: str | None, v1: bool) -> int | None:
    if text is None or text == "max":
        return None
    value = int(text) if text.isdigit() else None
    if value is not None and v1 and value >= _V1_UNLIMITED:
        return None
    return value


def _v2(paths: CgroupPaths, controller: str) -> Path | None:
    if paths.v2 is not None and (controller in paths.v2_controllers or controller == "cgroup"):
        return paths.v2
    return None


def total_oom_kills(paths: CgroupPaths) -> int:
    """Processes the OOM killer killed in the cgroup (0 when unknown)."""
    if "memory" in paths.v1:
        return _keyed(paths.v1["memory"] / "memory.oom_control").get("oom_kill", 0)
    v2 = _v2(paths, "memory")
    if v2 is not None:
        return _keyed(v2 / "memory.events").get("oom_kill", 0)
    return 0


class OomNotifier:
    """A file descriptor that turns readable when the cgroup may have seen an OOM kill.

    On v1 it is an eventfd registered through ``cgroup.event_control`` against
    ``memory.oom_control`` (as containerd does); on v2 an inotify watch of
    ``memory.events``, which the kernel marks modified on each change. Either
    replaces polling the counters of every running task.
    """

    def __init__(self, fd: int, keep: tuple[int, ...] = ()) -> None:
        self.fd = fd
        self._keep = keep

    def fileno(self) -> int:
        """The descriptor to wait on."""
        return self.fd

    def drain(self) -> None:
        """Consume what made the descriptor readable."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        """Release the descriptors."""
        for fd in (self.fd, *self._keep):
            with contextlib.suppress(OSError):
                os.close(fd)


def oom_notifier(paths: CgroupPaths) -> OomNotifier | None:
    """An :class:`OomNotifier` for the cgroup, or ``None`` if the host offers none (poll then)."""
    try:
        if "memory" in paths.v1:
            return _v1_notifier(paths.v1["memory"])
        v2 = _v2(paths, "memory")
        if v2 is not None:
            return _v2_notifier(v2 / "memory.events")
    except OSError:
        return None
    return None


def _v1_notifier(memory: Path) -> OomNotifier:
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        control = os.open(memory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(efd)
        raise
    try:
        with open(memory / "cgroup.event_control", "w") as handle:
            handle.write(f"{efd} {control}")
    except OSError:
        os.close(efd)
        os.close(control)
        raise
    return OomNotifier(efd, (control,))


_IN_MODIFY = 0x2
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def _v2_notifier(events: Path) -> OomNotifier:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    if libc.inotify_add_watch(fd, str(events).encode(), _IN_MODIFY) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"inotify_add_watch {events}")
    return OomNotifier(fd)


def read_metrics(container_id: str, paths: CgroupPaths) -> TaskMetrics:
    """CPU, memory, pids and IO figures of the cgroup; missing files read as zero."""
    metrics = TaskMetrics(container_id=container_id, timestamp=datetime.now(UTC),
                          cgroup=paths.mode)
    if "cpuacct" in paths.v1:
        metrics.cpu_usage_usec = (_int(paths.v1["cpuacct"] / "cpuacct.usage") or 0) // 1000
    elif (v2 := _v2(paths, "cgroup")) is not None:
        # cpu.stat's usage_usec is kept even without the cpu controller enabled.
        metrics.cpu_usage_usec = _keyed(v2 / "cpu.stat").get("usage_usec", 0)
    if "memory" in paths.v1:
        memory = paths.v1["memory"]
        metrics.memory_usage_bytes = _int(memory / "memory.usage_in_bytes") or 0
        metrics.memory_limit_bytes = _limit(_read(memory / "memory.limit_in_bytes"), True)
    elif (v2 := _v2(paths, "memory")) is not None:
        metrics.memory_usage_bytes = _int(v2 / "memory.current") or 0
        metrics.memory_limit_bytes = _limit(_read(v2 / "memory.max"), False)
    if "pids" in paths.v1:
        metrics.pids_current = _int(paths.v1["pids"] / "pids.current") or 0
        metrics.pids_limit = _limit(_read(paths.v1["pids"] / "pids.max"), True)
    elif (v2 := _v2(paths, "pids")) is not None:
        metrics.pids_current = _int(v2 / "pids.current") or 0
        metrics.pids_limit = _limit(_read(v2 / "pids.max"), False)
    metrics.oom_kills = total_oom_kills(paths)
    metrics.io_read_bytes, metrics.io_write_bytes = _io_bytes(paths)
    metrics.io_reads, metrics.io_writes = _io_ops(paths)
    _cpu_details(metrics, paths)
    _memory_details(metrics, paths)
    metrics.pids = _procs(paths)
    return metrics


def _procs(paths: CgroupPaths) -> list[int]:
    """The processes of the cgroup: ``cgroup.procs`` of its first hierarchy that has one."""
    for directory in paths.all_dirs():
        text = _read(directory / "cgroup.procs")
        if text is not None:
            return [int(pid) for pid in text.split() if pid.isdigit()]
    return []


#: v1 ``cpuacct.stat`` counts in USER_HZ clock ticks.
_USEC_PER_TICK = 1_000_000 // os.sysconf("SC_CLK_TCK")


def _cpu_details(metrics: TaskMetrics, paths: CgroupPaths) -> None:
    """User and system time, CFS periods and throttling."""
    if "cpuacct" in paths.v1:
        ticks = _keyed(paths.v1["cpuacct"] / "cpuacct.stat")
        metrics.cpu_user_usec = ticks.get("user", 0) * _USEC_PER_TICK
        metrics.cpu_system_usec = ticks.get("system", 0) * _USEC_PER_TICK
    if "cpu" in paths.v1:
        stat = _keyed(paths.v1["cpu"] / "cpu.stat")
        metrics.cpu_periods = stat.get("nr_periods", 0)
        metrics.cpu_throttled_periods = stat.get("nr_throttled", 0)
        metrics.cpu_throttled_usec = stat.get("throttled_time", 0) // 1000
    v2 = _v2(paths, "cgroup")
    if v2 is None or ("cpuacct" in paths.v1 and "cpu" in paths.v1):
        return
    stat = _keyed(v2 / "cpu.stat")
    if "cpuacct" not in paths.v1:
        metrics.cpu_user_usec = stat.get("user_usec", 0)
        metrics.cpu_system_usec = stat.get("system_usec", 0)
    if "cpu" not in paths.v1:
        metrics.cpu_periods = stat.get("nr_periods", 0)
        metrics.cpu_throttled_periods = stat.get("nr_throttled", 0)
        metrics.cpu_throttled_usec = stat.get("throttled_usec", 0)


def _memory_details(metrics: TaskMetrics, paths: CgroupPaths) -> None:
    """The ``memory.stat`` breakdown, peak, swap, kernel memory and limit hits."""
    if "memory" in paths.v1:
        memory = paths.v1["memory"]
        # The total_ figures include the cgroup's children (a pod's containers).
        stat = _keyed(memory / "memory.stat")
        metrics.memory_cache_bytes = stat.get("total_cache", 0)
        metrics.memory_rss_bytes = stat.get("total_rss", 0)
        metrics.memory_mapped_file_bytes = stat.get("total_mapped_file", 0)
        metrics.memory_swap_bytes = stat.get("total_swap", 0)
        metrics.memory_inactive_file_bytes = stat.get("total_inactive_file", 0)
        metrics.memory_pgfault = stat.get("total_pgfault", 0)
        metrics.memory_pgmajfault = stat.get("total_pgmajfault", 0)
        metrics.memory_max_usage_bytes = _int(memory / "memory.max_usage_in_bytes") or 0
        metrics.memory_kernel_bytes = _int(memory / "memory.kmem.usage_in_bytes") or 0
        metrics.memory_failcnt = _int(memory / "memory.failcnt") or 0
    elif (v2 := _v2(paths, "memory")) is not None:
        stat = _keyed(v2 / "memory.stat")
        metrics.memory_cache_bytes = stat.get("file", 0)
        metrics.memory_rss_bytes = stat.get("anon", 0)
        metrics.memory_mapped_file_bytes = stat.get("file_mapped", 0)
        metrics.memory_inactive_file_bytes = stat.get("inactive_file", 0)
        metrics.memory_pgfault = stat.get("pgfault", 0)
        metrics.memory_pgmajfault = stat.get("pgmajfault", 0)
        metrics.memory_kernel_bytes = stat.get(
            "kernel", stat.get("kernel_stack", 0) + stat.get("slab", 0))
        metrics.memory_swap_bytes = _int(v2 / "memory.swap.current") or 0
        metrics.memory_max_usage_bytes = _int(v2 / "memory.peak") or 0
        metrics.memory_failcnt = _keyed(v2 / "memory.events").get("max", 0)


def _io_ops(paths: CgroupPaths) -> tuple[int, int]:
    """Read and write operations, summed over devices: v1 ``blkio``, else v2 ``io.stat``."""
    return _io_totals(paths, "blkio.throttle.io_serviced", "rios", "wios")


def _io_bytes(paths: CgroupPaths) -> tuple[int, int]:
    """Bytes read and written, summed over devices: v1 ``blkio``, else v2 ``io.stat``."""
    return _io_totals(paths, "blkio.throttle.io_service_bytes", "rbytes", "wbytes")


def _io_totals(paths: CgroupPaths, v1_file: str, v2_read: str, v2_write: str) -> tuple[int, int]:
    """Reads and writes summed over devices, from v1 ``v1_file`` or v2 ``io.stat``'s two keys."""
    read = write = 0
    if "blkio" in paths.v1:
        # "MAJ:MIN Read N" lines plus a "Total N" line; throttle's files count every
        # IO (the CFQ/BFQ ones only what their scheduler saw).
        for line in (_read(paths.v1["blkio"] / v1_file) or "").splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[2].isdigit():
                if fields[1] == "Read":
                    read += int(fields[2])
                elif fields[1] == "Write":
                    write += int(fields[2])
    elif (v2 := _v2(paths, "io")) is not None:
        # "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ..." per device.
        for line in (_read(v2 / "io.stat") or "").splitlines():
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if value.isdigit() and key == v2_read:
                    read += int(value)
                elif value.isdigit() and key == v2_write:
                    write += int(value)
    return read, write


def remove_empty(paths: CgroupPaths, levels: int) -> None:
    """Remove the cgroup and up to ``levels`` parents where they are empty (best effort).

    The runtime removes the container's own cgroup; the namespace directories
    above it (``<cgroup_parent>/<ns>``) would otherwise accumulate.
    """
    for directory in paths.all_dirs():
        current = directory
        for _ in range(levels + 1):
            # Busy, not empty or gone: another task still uses the parent.
            with contextlib.suppress(OSError):
                os.rmdir(current)
            current = current.parent
