"""Short operations side by side, interleaved, with CPU per process: ``benchmarks/short_ops.py``.

For a machine that is not quiet. ``benchmarks/run.py`` gives the table of
record; this script answers "where does the time go" and "did this change
help" while other work loads the cores:

* every repetition alternates between the systems (containerd and one or
  more Moorage installs, e.g. the tree before and after a change), so load
  that comes and goes weighs on all of them alike;
* besides wall time it records CPU, which load disturbs much less: the
  client's (``wait4`` rusage of each command), the daemon's own and that of
  the children it reaped (``/proc/PID/stat``);
* the load average is recorded with every repetition;
* ``--perf`` adds a pass per (system, operation) under
  ``perf record -e sched:sched_stat_runtime`` (plus fork and exec), which
  gives the CPU of every process of the daemon's and the clients' trees by
  name (client, daemon, runc, conmon, containerd-shim, the container's own);
* ``start`` times a daemon from exec until its API socket accepts a
  connection and until it answers a first request (``GET /v1/version``;
  containerd: the HTTP/2 preface), on an empty root and on a root it has used
  before, with its RSS one second later;
* ``floor`` times ``python -c`` with each Moorage install's interpreter:
  ``pass`` (with and without ``site``), ``import aiohttp.web`` and every
  library the daemon has imported by the time it answers, with their RSS.

Examples::

    python benchmarks/short_ops.py --ops run_rm,version --reps 15
    python benchmarks/short_ops.py --moorage before=/var/tmp/mb-base/venv/bin \\
        --moorage after=/var/tmp/mb-i20/venv/bin --ops start --reps 10
    python benchmarks/short_ops.py --ops run_rm,burst --perf --reps 10 --burst 10

Without ``--moorage`` it measures a wheel of this tree in the benchmark's venv
(``harness/install.py``; ``MOORAGE_BENCH_CACHE`` picks the cache). Results
go to ``benchmarks/results/short-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness.daemons import Containerd, Moorage, env_without_proxies  # noqa: E402
from harness.startup import daemon_imports, loadavg, python_floors, start_twice  # noqa: E402

from tests.fixtures.images import busybox_image  # noqa: E402
from tests.fixtures.registry import Registry  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ENV = env_without_proxies()


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own CPU, reaped children's CPU) of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        f = stat.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def run_cmd(cmd: Sequence[str]) -> None:
    """Run a command (not measured)."""
    proc = subprocess.run(list(cmd), capture_output=True, env=ENV)
    raise_for(proc.returncode, cmd, proc.stderr)


def run_measured(cmd: Sequence[str]) -> tuple[float, float]:
    """Run a command; (wall seconds, CPU seconds of it and its waited children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    raise_for(proc.returncode, cmd, err)
    return wall, usage.ru_utime + usage.ru_stime


def raise_for(code: int, cmd: Sequence[str], err: bytes) -> None:
    """Raise with the command's stderr when it failed."""
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}: {err.decode()[-800:]}")


def parallel(cmds: list[list[str]]) -> tuple[float, float]:
    """Run commands at once; (wall seconds until all ended, their summed CPU seconds)."""
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(cmds)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = run_measured(cmds[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cmds))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, sum(c for _, c in results)


class System:
    """One daemon under test: containerd or a Moorage install."""

    def __init__(self, label: str, kind: str, bin_dir: Path | None = None) -> None:
        self.label = label
        self.kind = kind
        self.bin_dir = bin_dir
        self.daemon: Containerd | Moorage | None = None
        self.seq = 0

    def make(self, base: Path) -> Containerd | Moorage:
        """A daemon wrapper for ``base`` (not started)."""
        if self.kind == "containerd":
            return Containerd(base)
        cls = type(f"Moorage_{self.label}", (Moorage,), {"bin_dir": self.bin_dir})
        return cls(base)

    def start(self) -> None:
        """Start the warm daemon in a new directory."""
        base = Path(tempfile.mkdtemp(prefix=f"so-{self.label}-", dir="/var/tmp"))
        self.daemon = self.make(base)
        self.daemon.start()

    def stop(self) -> None:
        """Stop and remove the warm daemon."""
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon.wipe()
            self.daemon = None

    def next_ids(self, n: int, prefix: str) -> list[str]:
        """Fresh container ids."""
        self.seq += 1
        return [f"{prefix}{self.seq}-{i}" for i in range(n)]


# -- operations: each returns (wall, client CPU) and leaves the daemon as it found it ------


def op_run_rm(s: System, ref: str, n: int) -> tuple[float, float]:
    assert s.daemon is not None
    (cid,) = s.next_ids(1, "rm")
    return run_measured(s.daemon.run_rm(ref, cid, "echo", "hi"))


def op_version(s: System, ref: str, n: int) -> tuple[float, float]:
    assert s.daemon is not None
    return run_measured(s.daemon.version())


def op_pull(s: System, ref: str, n: int) -> tuple[float, float]:
    """Pull of the small image again: present and unpacked (the warm pull)."""
    assert s.daemon is not None
    return run_measured(s.daemon.pull(ref))


def _burst_ids(s: System, n: int) -> list[str]:
    return s.next_ids(n, "b")


def op_burst(s: System, ref: str, n: int) -> tuple[float, float]:
    """N detached ``sleep 600`` at once (torn down afterwards, untimed)."""
    assert s.daemon is not None
    d = s.daemon
    ids = _burst_ids(s, n)
    result = parallel([d.run_detached(ref, c, "sleep", "600") for c in ids])
    s.pending = ids  # type: ignore[attr-defined]
    return result


def op_teardown(s: System, ref: str, n: int) -> tuple[float, float]:
    """Kill, delete the task, delete the container for N (started untimed first)."""
    assert s.daemon is not None
    ids = getattr(s, "pending", None) or []
    s.pending = []  # type: ignore[attr-defined]
    wall = cpu = 0.0
    steps = [teardown_cmds(s, c) for c in ids]
    for stage in range(len(steps[0]) if steps else 0):
        w, c = parallel([st[stage] for st in steps if len(st) > stage])
        wall += w
        cpu += c
    return wall, cpu


def op_teardown_many(s: System, ref: str, n: int) -> tuple[float, float]:
    """The same teardown with each system's many-id commands: two calls in all.

    ``ctr tasks delete -f ID...`` (kills and deletes) then ``ctr containers
    delete ID...``; ``moorage tasks rm -f ID...`` then ``moorage containers rm
    ID...``. ``ctr tasks kill`` takes one id, so no separate kill stage.
    """
    assert s.daemon is not None
    ids = getattr(s, "pending", None) or []
    s.pending = []  # type: ignore[attr-defined]
    if not ids:
        return 0.0, 0.0
    d = s.daemon
    if s.kind == "containerd":
        stages = [d.cli("tasks", "delete", "-f", *ids), d.cli("containers", "delete", *ids)]
    else:
        stages = [d.cli("tasks", "rm", "-f", *ids), d.cli("containers", "rm", *ids)]
    wall = cpu = 0.0
    for cmd in stages:
        w, c = run_measured(cmd)
        wall += w
        cpu += c
    return wall, cpu


def teardown_cmds(s: System, cid: str) -> list[list[str]]:
    """The teardown's stages for one container (the harness's commands)."""
    assert s.daemon is not None
    return s.daemon.teardown(cid)


OPS: dict[str, Callable[[System, str, int], tuple[float, float]]] = {
    "run_rm": op_run_rm,
    "version": op_version,
    "pull": op_pull,
    "burst": op_burst,
    "teardown": op_teardown,
    "teardown_many": op_teardown_many,
}


# -- daemon start and the interpreter's floors (harness/startup.py) ---------------------


def measure_floors(systems: list[System], reps: int) -> dict[str, Any]:
    """``python -c ...`` with each Moorage install's interpreter: wall, CPU, RSS medians."""
    out: dict[str, Any] = {}
    for s in systems:
        if s.kind != "moorage" or s.bin_dir is None:
            continue
        imports = daemon_imports(s.make)
        out[s.label] = python_floors(str(s.bin_dir / "python"), imports, reps)
    return out


def measure_start(systems: list[System], reps: int) -> dict[str, Any]:
    """Daemon start, fresh root and restart on a used root, alternating systems."""
    out: dict[str, Any] = {s.label: {"fresh": [], "restart": []} for s in systems}
    for rep in range(reps):
        for s in systems if rep % 2 == 0 else systems[::-1]:
            for kind, sample in start_twice(s.make, s.label).items():
                out[s.label][kind].append(sample)
    return out


# -- perf: CPU per process ---------------------------------------------------------------

_RUNTIME = re.compile(r"^\s*(.+?)\s+(\d+)\s+.*sched:sched_stat_runtime:.*?runtime=(\d+)")
_FORK = re.compile(r"sched:sched_process_fork: comm=.* pid=(\d+) child_comm=.* child_pid=(\d+)")
_EXEC = re.compile(r"^\s*(.+?)\s+(\d+)\s+.*sched:sched_process_exec: filename=(\S+)")


def category(comm: str, side: str) -> str:
    """A process's role from its command name and which tree it is in."""
    if comm.startswith("runc"):
        return "runc"
    if comm in ("conmon",):
        return "conmon"
    if comm.startswith("containerd-shim"):
        return "shim"
    if comm == "ctr":
        return "client"
    if side == "client":
        return "client" if comm in ("moorage", "python", "python3") else f"client:{comm}"
    if comm in ("moorage", "python", "python3", "containerd") or comm.startswith(
            ("asyncio", "AnyIO", "ThreadPool", "anyio")):
        return "daemon"
    return "container"


def perf_pass(s: System, op: str, ref: str, n: int, reps: int) -> dict[str, Any]:
    """Run ``op`` ``reps`` times under perf; CPU ms per operation by process role."""
    assert s.daemon is not None
    daemon_pid = s.daemon.pid
    data = Path(tempfile.mkdtemp(prefix="so-perf-", dir="/var/tmp")) / "perf.data"
    if op.startswith("teardown"):
        op_burst(s, ref, n)
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-a", "-o", str(data), "-e",
         "sched:sched_stat_runtime,sched:sched_process_fork,sched:sched_process_exec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches
    load = loadavg()
    walls = []
    try:
        for rep in range(reps):
            if op.startswith("teardown") and rep:
                # The next teardown's containers (their start lands in this trace too,
                # but under the daemon: subtract with the burst pass when reading).
                raise RuntimeError("teardown under perf: use --reps 1 per pass")
            walls.append(OPS[op](s, ref, n)[0])
    finally:
        os.kill(perf.pid, signal.SIGINT)
        perf.wait()
    if op == "burst":
        op_teardown(s, ref, n)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,event,trace"],
                            capture_output=True, text=True).stdout
    shutil.rmtree(data.parent, ignore_errors=True)
    parent: dict[int, int] = {}
    daemon_tids = {int(t) for t in os.listdir(f"/proc/{daemon_pid}/task")}
    for line in script.splitlines():
        if m := _FORK.search(line):
            parent[int(m.group(2))] = int(m.group(1))
    me = os.getpid()

    def side(tid: int) -> str | None:
        seen = 0
        while seen < 64:
            if tid in daemon_tids or tid == daemon_pid:
                return "daemon"
            if tid == me:
                return "client"
            if tid not in parent:
                return None
            tid = parent[tid]
            seen += 1
        return None

    ns: dict[str, int] = defaultdict(int)
    execs: dict[str, int] = defaultdict(int)
    cache: dict[int, str | None] = {}
    for line in script.splitlines():
        if m := _RUNTIME.match(line):
            comm, tid, runtime = m.group(1), int(m.group(2)), int(m.group(3))
            if tid not in cache:
                cache[tid] = side(tid)
            where = cache[tid]
            if where is not None:
                ns[category(comm, where)] += runtime
        elif m := _EXEC.match(line):
            tid = int(m.group(2))
            if side(tid) is not None:
                execs[Path(m.group(3)).name] += 1
    per_op = max(1, reps)
    return {"cpu_ms_per_op": {k: round(v / 1e6 / per_op, 2) for k, v in sorted(ns.items())},
            "execs_per_op": {k: round(v / per_op, 2) for k, v in sorted(execs.items())},
            "wall_median": statistics.median(walls) if walls else None,
            "reps": reps, "load": load}


# -- main -----------------------------------------------------------------------------


def summarize(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Medians (and the range of the wall time) of a list of samples."""
    if not samples:
        return {}
    keys = samples[0].keys()
    out: dict[str, Any] = {"n": len(samples)}
    for k in keys:
        values = [x[k] for x in samples]
        out[k] = round(statistics.median(values), 4)
    walls = [x["wall"] for x in samples]
    out["wall_min"], out["wall_max"] = round(min(walls), 4), round(max(walls), 4)
    loads = [x["load"] for x in samples]
    out["load_range"] = [min(loads), max(loads)]
    return out


def main() -> int:
    """Measure; print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moorage", action="append", default=[], metavar="LABEL=BIN_DIR",
                        help="a Moorage install to measure (repeatable)")
    parser.add_argument("--no-containerd", action="store_true")
    parser.add_argument("--ops", default="run_rm,version,burst,teardown")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--burst", type=int, default=10, help="containers per burst")
    parser.add_argument("--perf", action="store_true", help="add a perf pass per operation")
    parser.add_argument("--perf-reps", type=int, default=5)
    args = parser.parse_args()
    ops = [o for o in args.ops.split(",") if o]

    systems: list[System] = [] if args.no_containerd else [System("containerd", "containerd")]
    for spec in args.moorage:
        label, _, bin_dir = spec.partition("=")
        systems.append(System(label, "moorage", Path(bin_dir)))
    if not args.moorage:
        from harness.install import venv_bin

        systems.append(System("moorage", "moorage", venv_bin()))

    results: dict[str, Any] = {"ops": {}, "perf": {}, "start": {}}
    work = Path(tempfile.mkdtemp(prefix="so-", dir="/var/tmp"))
    try:
        if "start" in ops:
            raw = measure_start(systems, args.reps)
            results["start"] = {label: {k: summarize(v) for k, v in r.items()}
                                for label, r in raw.items()}
            results["start_samples"] = raw
        if "floor" in ops:
            results["floor"] = measure_floors(systems, args.reps)
        timed = [o for o in ops if o not in ("start", "floor")]
        if timed:
            small = busybox_image(work / "busybox")
            with Registry(work / "registry") as registry:
                ref = registry.push_layout(small, small.ref_name, "bench/busybox:latest")
                for s in systems:
                    s.start()
                    assert s.daemon is not None
                    run_cmd(s.daemon.pull(ref))
                    run_measured(s.daemon.run_rm(ref, "warmup", "true"))
                samples: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(
                    lambda: defaultdict(list))
                try:
                    for rep in range(args.reps):
                        for op in timed:
                            for s in systems if rep % 2 == 0 else systems[::-1]:
                                assert s.daemon is not None
                                if op.startswith("teardown") and not getattr(s, "pending",
                                                                             None):
                                    op_burst(s, ref, args.burst)
                                    time.sleep(0.5)
                                load = loadavg()
                                d0 = proc_cpu(s.daemon.pid)
                                wall, client = OPS[op](s, ref, args.burst)
                                d1 = proc_cpu(s.daemon.pid)
                                samples[op][s.label].append({
                                    "wall": wall, "client_cpu": client,
                                    "daemon_cpu": d1[0] - d0[0],
                                    "daemon_children_cpu": d1[1] - d0[1], "load": load})
                                if op == "burst" and "teardown" not in timed:
                                    op_teardown(s, ref, args.burst)
                    results["ops"] = {op: {label: summarize(v) for label, v in by.items()}
                                      for op, by in samples.items()}
                    # Daemon CPU is read in clock ticks: totals over the reps are the figure.
                    for op, by in samples.items():
                        for label, v in by.items():
                            r = results["ops"][op][label]
                            r["daemon_cpu_mean"] = round(sum(x["daemon_cpu"] for x in v)
                                                         / len(v), 4)
                            r["daemon_children_cpu_mean"] = round(
                                sum(x["daemon_children_cpu"] for x in v) / len(v), 4)
                    if args.perf:
                        for op in timed:
                            for s in systems:
                                reps = 1 if op.startswith(("teardown", "burst")) else args.perf_reps
                                results["perf"].setdefault(op, {})[s.label] = perf_pass(
                                    s, op, ref, args.burst, reps)
                finally:
                    for s in systems:
                        if getattr(s, "pending", None):
                            op_teardown(s, ref, args.burst)
                        s.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"date": datetime.now(UTC).isoformat(), "args": vars(args), "results": results}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"short-{stamp}.json").write_text(json.dumps(record, indent=2))
    print(render(results))
    print(f"written: benchmarks/results/short-{stamp}.json")
    return 0


def render(results: dict[str, Any]) -> str:
    """A plain-text table of the medians."""
    lines = []
    for op, by in results["ops"].items():
        lines.append(f"== {op}")
        for label, r in by.items():
            lines.append(f"  {label:12} wall {r['wall']:.4f} s [{r['wall_min']:.4f}-"
                         f"{r['wall_max']:.4f}] client CPU {r['client_cpu'] * 1000:.1f} ms "
                         f"daemon CPU {r['daemon_cpu_mean'] * 1000:.1f} ms + reaped "
                         f"{r['daemon_children_cpu_mean'] * 1000:.1f} ms "
                         f"(load {r['load_range'][0]}-{r['load_range'][1]}, n {r['n']})")
    for op, by in results["perf"].items():
        lines.append(f"== perf {op} (CPU ms per operation)")
        for label, r in by.items():
            lines.append(f"  {label:12} {r['cpu_ms_per_op']} execs {r['execs_per_op']} "
                         f"(load {r['load']})")
    for label, by in results["start"].items():
        for kind, r in by.items():
            lines.append(f"== start {kind:8} {label:12} to listen {r['wall']:.4f} s "
                         f"[{r['wall_min']:.4f}-{r['wall_max']:.4f}] CPU to listen "
                         f"{r['cpu_to_listen'] * 1000:.0f} ms, to answer {r['to_answer']:.4f} s "
                         f"CPU {r['cpu_to_answer'] * 1000:.0f} ms, RSS after 1 s "
                         f"{r['rss_kb_1s']:,} KiB, first second "
                         f"{r['cpu_first_second'] * 1000:.0f} ms "
                         f"(load {r['load_range'][0]}-{r['load_range'][1]}, n {r['n']})")
    for label, by in results.get("floor", {}).items():
        for name, r in by.items():
            lines.append(f"== floor {label:12} {name:36} wall {r['wall']:.4f} s "
                         f"CPU {r['cpu'] * 1000:.1f} ms RSS {r['rss_kib']:,} KiB "
                         f"(load {r['load']})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
