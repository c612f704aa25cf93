"""Each figure of the benchmark table: measured for containerd and Moorage, side by side."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.bigimage import layer_blobs
from harness.daemons import Containerd, Moorage, env_without_proxies
from harness.freshfs import fresh_filesystem
from harness.memory import pids_named, pss_kib, rss_kib
from harness.startup import daemon_imports, python_floors, start_twice
from harness.stats import Sample, Series, measure

__all__ = ["FIGURES", "Context"]

Runtime = Containerd | Moorage


class Context:
    """What figures share: image references, repetitions, the warm daemons."""

    def __init__(self, big_ref: str, small_ref: str, big_layout: Path, small_rootfs: Path,
                 quick: bool) -> None:
        self.big_ref = big_ref
        self.small_ref = small_ref
        self.big_layout = big_layout
        self.small_rootfs = small_rootfs
        self.quick = quick
        self.warm: dict[str, Runtime] = {}
        self.extra: dict[str, Any] = {}

    def reps(self, full: int) -> int:
        """Repetitions, fewer in quick mode."""
        return max(1, full // 4) if self.quick else full


def run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a command; raise with its output on failure."""
    proc = subprocess.run(list(cmd), capture_output=True, env=env_without_proxies(), **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           f"{proc.stderr.decode()[-800:]}")
    return proc


def _pair(results: dict[str, Series]) -> dict[str, Any]:
    return {name: s.summary() for name, s in results.items()}


# -- cold pull ------------------------------------------------------------------------


def cold_pull(ctx: Context) -> dict[str, Any]:
    """Pull+unpack of the large image into an empty store on a fresh filesystem."""
    series = {"containerd": Series(), "moorage": Series(), "floor_tar_xzf": Series()}
    for rep in range(ctx.reps(5)):
        order: list[type[Containerd] | type[Moorage]] = [Containerd, Moorage]
        if rep % 2:
            order.reverse()
        for cls in order:
            with fresh_filesystem() as mnt:
                daemon = cls(mnt / "d")
                daemon.start()
                try:
                    series[daemon.name].add(measure(lambda d=daemon: run(d.pull(ctx.big_ref))))
                finally:
                    daemon.stop()
                    daemon.wipe()
        with fresh_filesystem() as mnt:
            target = mnt / "rootfs"
            target.mkdir()

            def untar(target: Path = target) -> None:
                for blob in layer_blobs(ctx.big_layout):
                    run(["tar", "-xzf", str(blob), "-C", str(target)])

            series["floor_tar_xzf"].add(measure(untar))
    return _pair(series)


def floor_sha256(ctx: Context) -> dict[str, Any]:
    """sha256sum of the large image's layers (a floor for verification)."""
    series = Series()
    blobs = [str(b) for b in layer_blobs(ctx.big_layout)]
    for _ in range(ctx.reps(3)):
        series.add(measure(lambda: run(["sha256sum", *blobs])))
    return {"floor": series.summary()}


def floor_gunzip(ctx: Context) -> dict[str, Any]:
    """gzip -d of the large image's layers to /dev/null."""
    series = Series()
    blobs = [str(b) for b in layer_blobs(ctx.big_layout)]

    def gunzip() -> None:
        for blob in blobs:
            with open(blob, "rb") as src:
                run(["gzip", "-d", "-c"], stdin=src)

    for _ in range(ctx.reps(3)):
        series.add(measure(gunzip))
    return {"floor": series.summary()}


# -- warm daemons -----------------------------------------------------------------------


def _warm(ctx: Context, cls: type[Containerd] | type[Moorage]) -> Runtime:
    if cls.name not in ctx.warm:
        base = Path(tempfile.mkdtemp(prefix=f"mb-{cls.name}-", dir="/var/tmp"))
        daemon = cls(base)
        daemon.start()
        time.sleep(1.0)
        ctx.extra.setdefault("daemon_idle_rss_kib", {})[cls.name] = daemon.rss_kib()
        run(daemon.pull(ctx.small_ref))
        ctx.warm[cls.name] = daemon
    return ctx.warm[cls.name]


def run_rm(ctx: Context) -> dict[str, Any]:
    """``run --rm IMAGE echo hi`` end to end, warm image.

    Repetitions alternate between the runtimes, so that a change in the
    machine's load meanwhile weighs on both alike.
    """
    series = {"containerd": Series(), "moorage": Series()}
    daemons = [_warm(ctx, cls) for cls in (Containerd, Moorage)]
    for i in range(ctx.reps(20)):
        for daemon in daemons:
            cid = f"rm{i}"
            series[daemon.name].add(
                measure(lambda d=daemon, c=cid: run(d.run_rm(ctx.small_ref, c, "echo", "hi"))))
    return _pair(series)


def floor_runc(ctx: Context) -> dict[str, Any]:
    """Raw ``runc run`` of a bundle with the same rootfs."""
    bundle = Path(tempfile.mkdtemp(prefix="mb-bundle-", dir="/var/tmp"))
    shutil.copytree(ctx.small_rootfs, bundle / "rootfs", symlinks=True)
    run(["runc", "spec", "--bundle", str(bundle)])
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["echo", "hi"]
    (bundle / "config.json").write_text(json.dumps(spec))
    series = Series()
    for i in range(ctx.reps(20)):
        series.add(measure(lambda i=i: run(["runc", "run", "--bundle", str(bundle),
                                            f"mb-floor-{i}"])))
    shutil.rmtree(bundle, ignore_errors=True)
    return {"floor": series.summary()}


def _parallel(cmds: list[list[str]]) -> None:
    with ThreadPoolExecutor(max_workers=len(cmds)) as pool:
        for result in pool.map(run, cmds):
            del result


def burst_and_teardown(ctx: Context) -> dict[str, Any]:
    """N detached containers started at once, memory while running, then their teardown.

    Repetitions alternate between the runtimes (and which goes first), with a
    pause between them for background work (garbage collection) to settle:
    one sample each would measure the machine's load as much as the runtimes.
    Memory is read on the first repetition.
    """
    n = 10 if ctx.quick else 50
    burst = {"containerd": Series(), "moorage": Series()}
    teardown = {"containerd": Series(), "moorage": Series()}
    memory: dict[str, Any] = {}
    daemons = [_warm(ctx, cls) for cls in (Containerd, Moorage)]
    for rep in range(ctx.reps(3) if ctx.quick else 3):
        ids = [f"b{rep}-{i}" for i in range(n)]
        for daemon in daemons[::-1] if rep % 2 else daemons:
            time.sleep(3.0)
            burst[daemon.name].add(measure(lambda d=daemon, ids=ids: _parallel(
                [d.run_detached(ctx.small_ref, c, "sleep", "600") for c in ids])))
            time.sleep(1.0)
            if daemon.name not in memory:
                memory[daemon.name] = _memory(daemon)

            def tear(d: Runtime = daemon, ids: list[str] = ids) -> None:
                steps = [d.teardown(c) for c in ids]
                for stage in range(3):
                    _parallel([s[stage] for s in steps])

            teardown[daemon.name].add(measure(tear))
    return {"burst": _pair(burst), "teardown": _pair(teardown), "memory": memory, "n": n}


def _memory(daemon: Runtime) -> dict[str, Any]:
    sup = pids_named(daemon.supervisor, str(daemon.base))
    rss = [rss_kib(p) for p in sup]
    pss = [pss_kib(p) for p in sup]
    return {
        "supervisors": len(sup),
        "rss_kib_mean": statistics.mean(rss) if rss else None,
        "pss_kib_mean": statistics.mean(pss) if pss else None,
        "daemon_rss_kib_with_n": daemon.rss_kib(),
    }


def cli_round_trip(ctx: Context) -> dict[str, Any]:
    """``version`` against a running daemon, alternating, plus the interpreter's own start.

    ``floor_interpreter`` is ``python -c pass`` with the interpreter the
    ``moorage`` script runs: what any Python command costs on this machine
    before its first import (``site`` and its ``.pth`` files included).
    """
    series = {"containerd": Series(), "moorage": Series(), "floor_interpreter": Series()}
    daemons = [_warm(ctx, cls) for cls in (Containerd, Moorage)]
    for _ in range(ctx.reps(20)):
        for daemon in daemons:
            series[daemon.name].add(measure(lambda d=daemon: run(d.version())))
        series["floor_interpreter"].add(measure(lambda: run([Moorage.python(), "-c", "pass"])))
    return _pair(series)


def warm_pull(ctx: Context) -> dict[str, Any]:
    """``images pull`` of the small image again: present and unpacked; alternating.

    What a script's ``pull`` before each ``run`` costs: resolve the tag at the
    registry, find every blob and the snapshots there. ``daemon_cpu_mean`` is
    the daemon's share (the client's is ``user_median`` + ``system_median``).
    """
    series = {"containerd": Series(), "moorage": Series()}
    daemons = [_warm(ctx, cls) for cls in (Containerd, Moorage)]
    for i in range(ctx.reps(20)):
        for daemon in daemons if i % 2 == 0 else daemons[::-1]:
            series[daemon.name].add(
                measure(lambda d=daemon: run(d.pull(ctx.small_ref)), daemon=daemon.pid))
    return _pair(series)


def daemon_start(ctx: Context) -> dict[str, Any]:
    """Exec of the daemon until it answers a first request, on an empty root and on a used one.

    Moorage: ``GET /v1/version`` over its socket; containerd: its gRPC server's
    answer to the HTTP/2 preface (``harness/startup.py``). ``restart`` starts
    again on the root (database, directories) the first start made.
    Repetitions alternate between the runtimes (and which goes first).
    """
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        kind: {"containerd": [], "moorage": []} for kind in ("fresh", "restart")}
    classes: list[type[Containerd] | type[Moorage]] = [Containerd, Moorage]
    for rep in range(ctx.reps(10)):
        for cls in classes if rep % 2 == 0 else classes[::-1]:
            for kind, sample in start_twice(cls, cls.name).items():
                samples[kind][cls.name].append(sample)

    def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
        answer = [r["to_answer"] for r in runs]
        return {"n": len(runs), "unit": "s", "median": statistics.median(answer),
                "min": min(answer), "max": max(answer),
                **{f"{k}_median": statistics.median(r[k] for r in runs)
                   for k in ("wall", "cpu_to_listen", "cpu_to_answer", "cpu_first_second",
                             "rss_kb_1s")},
                "load": [min(r["load"] for r in runs), max(r["load"] for r in runs)]}

    return {kind: {who: summary(runs) for who, runs in by.items()}
            for kind, by in samples.items()}


def floor_python(ctx: Context) -> dict[str, Any]:
    """``python -c`` floors with the measured install's interpreter (``harness/startup.py``).

    ``pass`` with and without ``site``, ``import aiohttp.web``, and every module
    outside ``runtime`` that the daemon has imported by the time it answers:
    what ``daemon_start`` and the daemon's idle RSS cannot go below.
    """
    imports = daemon_imports(Moorage)
    return {"python": Moorage.python(), "daemon_imports": imports,
            "floors": python_floors(Moorage.python(), imports, ctx.reps(10))}


FIGURES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "cold_pull": cold_pull,
    "floor_sha256": floor_sha256,
    "floor_gunzip": floor_gunzip,
    "cli_round_trip": cli_round_trip,
    "run_rm": run_rm,
    "floor_runc": floor_runc,
    "burst_teardown": burst_and_teardown,
    "warm_pull": warm_pull,
    "daemon_start": daemon_start,
    "floor_python": floor_python,
}

_ = Sample  # re-exported for type readers of results
