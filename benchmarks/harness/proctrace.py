"""CPU of every process a daemon starts, by role, from ``perf``'s scheduler events.

:func:`trace_tree` runs a function under ``perf record -a`` with the
``sched_stat_runtime``, ``sched_process_fork`` and ``sched_process_exec``
tracepoints, then keeps the events of the daemon's tree only: its threads and
everything forked from them during the trace, double-forked monitors and shims
included (the fork events chain them back to the daemon, whoever reaps them).
Other sessions' processes on a shared machine are left out, which
``/proc/PID/stat`` of the daemon cannot do for children it never reaps.

Each process counts under a role named from its command name (:func:`role`):
the daemon's own threads, ``runc``, ``conmon``, ``shim``, each CNI plugin by
name, ``iptables``, ``infra`` (catatonit or pause), ``mount`` and
``container`` for the workload. Exec counts are per binary name.

:class:`CpuGroup` is the cheap total: the daemon moved into a cgroup v1
``cpuacct`` group of its own, which every process it starts inherits (runc,
conmon or shims, CNI plugins, iptables) until runc moves a container's
processes into the container's cgroup. ``cpuacct.usage`` is then the CPU of
the daemon and its helpers, whatever else the machine runs. What runc's init
does once it is in the container's cgroup (namespaces, mounts, the seccomp
filter, then the exec) is charged to the container: :func:`cgroups_cpu` reads
the groups of the pods and containers by id.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

__all__ = ["CpuGroup", "cgroups_cpu", "role", "trace_tree"]

CPUACCT = Path("/sys/fs/cgroup/cpuacct")

_RUNTIME = re.compile(r"^\s*(.+?)\s+(\d+)\s+.*sched:sched_stat_runtime:.*?runtime=(\d+)")
_FORK = re.compile(r"sched:sched_process_fork: comm=.* pid=(\d+) child_comm=.* child_pid=(\d+)")
_EXEC = re.compile(r"^\s*(.+?)\s+(\d+)\s+.*sched:sched_process_exec: filename=(\S+)")
_LOST = re.compile(r"lost (\d+) chunks")

#: Command names (as the kernel keeps them, 15 characters) of the CNI plugins Debian ships.
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback", "firewall", "tuning",
               "bandwidth", "macvlan", "ipvlan", "ptp", "static", "dhcp", "vlan")


def role(comm: str) -> str:
    """The role of a process of a daemon's tree, from its command name."""
    if comm.startswith("runc"):
        return "runc"
    if comm == "conmon":
        return "conmon"
    if comm.startswith("containerd-shim"):
        return "shim"
    if comm in CNI_PLUGINS:
        return f"cni:{comm}"
    if comm.startswith(("iptables", "ip6tables", "xtables")):
        return "iptables"
    if comm in ("catatonit", "pause"):
        return "infra"
    if comm in ("mount", "umount"):
        return "mount"
    # ``moorage-py``: the Python daemon the compiled ``moorage`` front end execs.
    if comm in ("moorage", "moorage-py", "python", "python3", "containerd") or comm.startswith(
            ("asyncio", "AnyIO", "ThreadPool", "anyio", "grpc", "netns ", "default-executo")):
        return "daemon"
    return "container"


def trace_tree(daemon_pid: int, fn: Callable[[], Any], per: int = 1) -> dict[str, Any]:
    """Run ``fn`` under perf; CPU ms and execs of ``daemon_pid``'s tree, divided by ``per``.

    Returns ``{"cpu_ms": {role: ms}, "execs": {binary: count}, "wall": s,
    "lost_chunks": n}``; ``lost_chunks`` above 0 means perf could not keep up
    and the figures are short.
    """
    work = Path(tempfile.mkdtemp(prefix="proctrace-", dir="/var/tmp"))
    data = work / "perf.data"
    perf = subprocess.Popen(
        ["perf", "record", "-a", "-m", "1024", "-o", str(data), "-e",
         "sched:sched_stat_runtime,sched:sched_process_fork,sched:sched_process_exec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # perf attaches
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        daemon_tids = {int(t) for t in os.listdir(f"/proc/{daemon_pid}/task")}
    finally:
        os.kill(perf.pid, signal.SIGINT)
        _, err = perf.communicate()
    lost = sum(int(n) for n in _LOST.findall(err.decode(errors="replace")))
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,event,trace"],
                            capture_output=True, text=True).stdout
    shutil.rmtree(work, ignore_errors=True)
    parent: dict[int, int] = {}
    for line in script.splitlines():
        if m := _FORK.search(line):
            parent[int(m.group(2))] = int(m.group(1))
    in_tree: dict[int, bool] = {}

    def belongs(tid: int) -> bool:
        seen: list[int] = []
        found = False
        while len(seen) < 64:
            if tid in in_tree:
                found = in_tree[tid]
                break
            seen.append(tid)
            if tid in daemon_tids or tid == daemon_pid:
                found = True
                break
            if tid not in parent:
                break
            tid = parent[tid]
        for t in seen:
            in_tree[t] = found
        return found

    cpu_ns: dict[str, int] = defaultdict(int)
    execs: dict[str, int] = defaultdict(int)
    for line in script.splitlines():
        if m := _RUNTIME.match(line):
            if belongs(int(m.group(2))):
                cpu_ns[role(m.group(1))] += int(m.group(3))
        elif (m := _EXEC.match(line)) and belongs(int(m.group(2))):
            execs[Path(m.group(3)).name] += 1
    per = max(1, per)
    total = sum(cpu_ns.values())
    return {"cpu_ms": {**{k: round(v / 1e6 / per, 2) for k, v in sorted(cpu_ns.items())},
                       "total": round(total / 1e6 / per, 2)},
            "execs": {k: round(v / per, 2) for k, v in sorted(execs.items())},
            "wall": wall, "lost_chunks": lost}


class CpuGroup:
    """A ``cpuacct`` cgroup holding one daemon (and what it starts): its CPU in seconds.

    ``None`` from :meth:`adopt` where the host has no cgroup v1 ``cpuacct``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def adopt(cls, pid: int, name: str) -> CpuGroup | None:
        """Move ``pid`` (all its threads) into a new group ``name``."""
        if not (CPUACCT / "cpuacct.usage").exists():
            return None
        path = CPUACCT / name
        path.mkdir(exist_ok=True)
        (path / "cgroup.procs").write_text(str(pid))
        return cls(path)

    def seconds(self) -> float:
        """CPU the group's processes used so far (those that left it keep their share)."""
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """Remove the group once the daemon is gone; processes still in it go to the root."""
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                (CPUACCT / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def cgroups_cpu(ids: Collection[str], depth: int = 4) -> float:
    """CPU seconds of the cpuacct groups named by ``ids`` (a pod's or a container's, anywhere).

    Runtimes name a task's cgroup after its id (``<parent>/<namespace>/<id>``);
    groups already removed count nothing.
    """
    wanted = set(ids)
    total = 0
    level = [CPUACCT]
    for _ in range(depth):
        below: list[Path] = []
        for parent in level:
            with contextlib.suppress(OSError):
                for entry in os.scandir(parent):
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    if entry.name in wanted:
                        with contextlib.suppress(OSError, ValueError):
                            total += int(Path(entry.path, "cpuacct.usage").read_text())
                    else:
                        below.append(Path(entry.path))
        level = below
    return total / 1e9
