"""Moorage's CRI against containerd 1.6's, side by side: ``python benchmarks/bench_cri.py``.

Both daemons run with their CRI on (harness/cri.py: own root, state, socket,
CNI network, local images; containerd's pause image is imported, never
pulled) and are driven through one gRPC client, the generated ``runtime.v1``
stubs. Figures, each repetition alternating which daemon goes first and
never both busy at once:

* ``pods_up``: RunPodSandbox + CreateContainer + StartContainer for N pods
  (20), N at once as a kubelet's pod workers do, with the kubelet's namespace
  options for a plain pod (PID namespace not shared: Moorage runs no infra
  process then, containerd 1.6 still its pause container; ``--share-pid``
  shares it); ``pods_down``: their
  StopContainer + StopPodSandbox + RemoveContainer + RemovePodSandbox, N at
  once. The container is busybox ``sh`` that exits on SIGTERM.
* ``exec_sync``: M (100) sequential ExecSync of ``true`` in one container.
* ``exec_stream``: M sequential Exec RPC + SPDY/3.1 upgrade of the URL
  (``v4.channel.k8s.io``, stdout and stderr, the test suite's client,
  tests/cri/streaming/spdy_client.py) running ``true``, until its exit status.
* ``exec_websocket``: the same over a websocket (``v4.channel.k8s.io``,
  aiohttp's client), which containerd 1.6's streaming server serves too.
* ``idle_rss``: the daemon's RSS a few seconds after a fresh start with the
  CRI loaded and no client ever connected (containerd: CRI plugin on;
  Moorage: ``cri.v1`` enabled), one fresh start per repetition.
* ``rss_with_pods``: the daemon's RSS with the N pods running.

With ``--perf``, one more pods_up and pods_down per daemon run under ``perf``
(harness/proctrace.py): CPU milliseconds per pod of every process of the
daemon's tree by role (the daemon, runc, conmon or shims, each CNI plugin,
the infra process...) and execs per pod by binary. ``--reps 0 --rss-reps 0
--perf`` gives only those.

Medians over ``--reps``; the JSON (every sample, load averages, daemon CPU)
and a markdown table go to ``benchmarks/results/cri-<UTC stamp>.{json,md}``.
``benchmarks/run.py --cri`` runs the same and adds the rows to its table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness.cri import CriClient, CriContainerd, CriDaemon, CriMoorage, build_pause_layout  # noqa: E402
from harness.cri_figures import CRI_TARGETS, cri_ratios  # noqa: E402
from harness.memory import pss_kib, rss_kib  # noqa: E402
from harness.proctrace import CpuGroup, cgroups_cpu, trace_tree  # noqa: E402
from harness.stats import proc_cpu  # noqa: E402

from tests.fixtures.images import busybox_image  # noqa: E402
from tests.fixtures.registry import Registry  # noqa: E402

__all__ = ["measure_cri"]

#: A workload that ends on SIGTERM, so StopContainer takes the TERM path on both.
WORKLOAD = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def loadavg() -> float:
    """The one-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


#: Each running daemon's cpuacct group, by pid (harness/proctrace.py).
_GROUPS: dict[int, CpuGroup | None] = {}


class Timed:
    """Samples of one figure for one daemon: wall seconds, daemon CPU, its tree's CPU, load."""

    def __init__(self) -> None:
        self.samples: list[dict[str, float]] = []

    def measure(self, daemon: CriDaemon, fn: Callable[[], Any],
                made: list[tuple[str, str]] | None = None) -> None:
        """Time ``fn``; record the daemon's own CPU and its tree's over it.

        The tree is the daemon and every process it started, containers' own
        processes left out (its cpuacct group); absent where the host has none.
        With ``made`` (the pods and containers ``fn`` made), also the CPU
        charged to their own cgroups by then: runc's init once it has moved
        there, the infra process, the workload's start.
        """
        load = loadavg()
        group = _GROUPS.get(daemon.pid)
        tree0 = group.seconds() if group is not None else 0.0
        cpu0 = proc_cpu(daemon.pid)
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        cpu1 = proc_cpu(daemon.pid)
        sample = {"wall": wall, "daemon_cpu": sum(cpu1) - sum(cpu0), "load": load}
        if group is not None:
            sample["tree_cpu"] = group.seconds() - tree0
            if made is not None:
                sample["pods_cpu"] = cgroups_cpu({i for ids in made for i in ids})
        self.samples.append(sample)

    def summary(self) -> dict[str, Any]:
        """Median, min, max of wall; median daemon CPU; every sample."""
        if not self.samples:
            return {"n": 0}
        walls = [s["wall"] for s in self.samples]
        summary = {"n": len(walls), "unit": "s", "median": statistics.median(walls),
                   "min": min(walls), "max": max(walls),
                   "daemon_cpu_median": statistics.median(s["daemon_cpu"] for s in self.samples),
                   "samples": self.samples}
        trees = [s["tree_cpu"] for s in self.samples if "tree_cpu" in s]
        if trees:
            summary["tree_cpu_median"] = statistics.median(trees)
        both = [s["tree_cpu"] + s["pods_cpu"] for s in self.samples if "pods_cpu" in s]
        if both:
            summary["tree_and_pods_cpu_median"] = statistics.median(both)
        return summary


def _streamed_execs(client: CriClient, container_id: str, count: int) -> None:
    from tests.cri.streaming.spdy_client import RemoteCommand, exit_code

    async def run() -> None:
        for _ in range(count):
            command = await RemoteCommand.open(client.exec_url(container_id, ["true"]))
            _, _, status = await command.finish()
            if exit_code(status) != 0:
                raise RuntimeError(f"streamed exec of true: {status}")

    asyncio.run(run())


def _websocket_execs(client: CriClient, container_id: str, count: int) -> None:
    import aiohttp

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(count):
                url = client.exec_url(container_id, ["true"]).replace("http://", "ws://")
                status: dict[str, Any] = {}
                async with http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
                    async for message in ws:
                        data = message.data
                        if message.type == aiohttp.WSMsgType.BINARY and data[:1] == b"\x03" \
                                and len(data) > 1:
                            status = json.loads(data[1:])
                if status.get("status") != "Success":
                    raise RuntimeError(f"websocket exec of true: {status}")

    asyncio.run(run())


def _exec_syncs(client: CriClient, container_id: str, count: int) -> None:
    for _ in range(count):
        if client.exec_sync(container_id, ["true"]) != 0:
            raise RuntimeError("ExecSync of true did not exit 0")


def _one_round(daemon: CriDaemon, client: CriClient, image: str, pods: int, execs: int,
               series: dict[str, dict[str, Timed]], rss: dict[str, list[int]]) -> None:
    made: list[tuple[str, str]] = []

    def up() -> None:
        with ThreadPoolExecutor(pods) as pool:
            made.extend(pool.map(lambda _: client.run_pod_with_container(image, WORKLOAD),
                                 range(pods)))

    def down() -> None:
        with ThreadPoolExecutor(pods) as pool:
            list(pool.map(lambda ids: client.tear_down(*ids), made))

    name = daemon.name
    try:
        series["pods_up"][name].measure(daemon, up, made)
        time.sleep(1)
        rss[name].append(rss_kib(daemon.pid))
        target = made[0][1]
        series["exec_sync"][name].measure(daemon, lambda: _exec_syncs(client, target, execs))
        series["exec_stream"][name].measure(
            daemon, lambda: _streamed_execs(client, target, execs))
        series["exec_websocket"][name].measure(
            daemon, lambda: _websocket_execs(client, target, execs))
        series["pods_down"][name].measure(daemon, down)
    except BaseException:
        client.remove_everything()
        raise


def _traced_round(daemon: CriDaemon, client: CriClient, image: str,
                  pods: int) -> dict[str, Any]:
    """pods_up and pods_down of ``pods`` pods, each under perf, per pod."""
    made: list[tuple[str, str]] = []

    def up() -> None:
        with ThreadPoolExecutor(pods) as pool:
            made.extend(pool.map(lambda _: client.run_pod_with_container(image, WORKLOAD),
                                 range(pods)))

    def down() -> None:
        with ThreadPoolExecutor(pods) as pool:
            list(pool.map(lambda ids: client.tear_down(*ids), made))

    try:
        found = {"pods_up": trace_tree(daemon.pid, up, per=pods)}
        time.sleep(1)
        found["pods_down"] = trace_tree(daemon.pid, down, per=pods)
    except BaseException:
        client.remove_everything()
        raise
    return found


def _start(cls: type[CriContainerd] | type[CriMoorage], work: Path) -> CriDaemon:
    base = Path(tempfile.mkdtemp(prefix=f"cri-{cls.name[:2]}-", dir=work))
    daemon = cls(base)
    daemon.start()
    _GROUPS[daemon.pid] = CpuGroup.adopt(daemon.pid, f"mb-cri-{os.getpid()}-{cls.name}")
    return daemon


def _stop(daemon: CriDaemon) -> None:
    pid = daemon.pid
    daemon.stop()
    group = _GROUPS.pop(pid, None)
    if group is not None:
        group.remove()
    daemon.wipe()


def _idle_rss(work: Path, reps: int, settle: float) -> dict[str, Any]:
    """RSS of freshly started daemons, CRI loaded and never called, interleaved."""
    found: dict[str, list[dict[str, int]]] = {"containerd": [], "moorage": []}
    for rep in range(reps):
        order = (CriMoorage, CriContainerd) if rep % 2 == 0 else (CriContainerd, CriMoorage)
        for cls in order:
            daemon = _start(cls, work)
            try:
                time.sleep(settle)
                found[cls.name].append({"rss_kib": rss_kib(daemon.pid),
                                        "pss_kib": pss_kib(daemon.pid)})
            finally:
                _stop(daemon)
    return {name: {"median": statistics.median(s["rss_kib"] for s in samples),
                   "pss_median": statistics.median(s["pss_kib"] for s in samples),
                   "unit": "KiB", "samples": samples}
            for name, samples in found.items()}


def measure_cri(reps: int = 5, pods: int = 20, execs: int = 100, rss_reps: int = 3,
                settle: float = 5.0, perf: bool = False) -> dict[str, Any]:
    """Every CRI figure for both daemons (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="mb-cri-", dir="/var/tmp"))
    results: dict[str, Any] = {"pods": pods, "execs": execs, "reps": reps}
    try:
        if rss_reps > 0:
            results["idle_rss"] = _idle_rss(work, rss_reps, settle)
        busybox = busybox_image(work / "busybox", ref_name="moorage.local/bench/busybox:1")
        pause = build_pause_layout(work / "pause")
        series = {fig: {"containerd": Timed(), "moorage": Timed()}
                  for fig in ("pods_up", "exec_sync", "exec_stream", "exec_websocket", "pods_down")}
        rss: dict[str, list[int]] = {"containerd": [], "moorage": []}
        with Registry(work / "registry") as registry:
            moorage_image = registry.push_layout(busybox, busybox.ref_name, "bench/busybox:1")
            containerd = _start(CriContainerd, work)
            moorage = _start(CriMoorage, work)
            clients = {"containerd": CriClient(containerd.cri_socket, work / "logs-cd"),
                       "moorage": CriClient(moorage.cri_socket, work / "logs-mo")}
            try:
                assert isinstance(containerd, CriContainerd)
                containerd.import_layout(pause)
                containerd.import_layout(busybox.path)
                images = {"containerd": busybox.ref_name,
                          "moorage": clients["moorage"].pull(moorage_image)}
                for client in clients.values():
                    client.wait_ready()
                daemons: dict[str, CriDaemon] = {"containerd": containerd, "moorage": moorage}
                # One unmeasured round each: caches, worker threads, first CNI ADD.
                warm = {fig: {"containerd": Timed(), "moorage": Timed()} for fig in series}
                for name, daemon in daemons.items():
                    _one_round(daemon, clients[name], images[name], min(pods, 4), 5, warm,
                               {"containerd": [], "moorage": []})
                for rep in range(reps):
                    order = ("moorage", "containerd") if rep % 2 == 0 else (
                        "containerd", "moorage")
                    for name in order:
                        print(f"== rep {rep + 1}/{reps} {name}", file=sys.stderr, flush=True)
                        _one_round(daemons[name], clients[name], images[name], pods, execs,
                                   series, rss)
                if perf:
                    results["perf"] = {}
                    for name, daemon in daemons.items():
                        print(f"== perf {name}", file=sys.stderr, flush=True)
                        results["perf"][name] = _traced_round(daemon, clients[name],
                                                              images[name], pods)
            finally:
                for client in clients.values():
                    client.close()
                for daemon in (moorage, containerd):
                    _stop(daemon)
        for fig, both in series.items():
            results[fig] = {name: timed.summary() for name, timed in both.items()}
        results["rss_with_pods"] = {name: {"median": statistics.median(v), "unit": "KiB",
                                           "samples": v} for name, v in rss.items() if v}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _fmt(value: float | None, kib: bool) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} KiB" if kib else f"{value:.3f} s"


def render(record: dict[str, Any]) -> str:
    """The markdown table of one run."""
    res = record["results"]
    lines = [f"# Moorage CRI vs containerd {record['containerd']} CRI — {record['date']}", "",
             f"N = {res.get('pods')} pods, M = {res.get('execs')} execs, {res.get('reps')} "
             f"interleaved repetitions (medians); load average during the run "
             f"{record['load']['min']:.1f} to {record['load']['max']:.1f} on "
             f"{os.cpu_count()} cores (the machine is shared). Run took {record['seconds']} s.",
             "", "| figure | what | moorage | containerd | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for name, (what, target) in CRI_TARGETS.items():
        row = record["ratios"].get(name)
        if row is None:
            lines.append(f"| {name} | {what} | not measured | | | {target or 'report'} | |")
            continue
        kib = "rss" in name
        ratio = row["ratio"]
        met = "" if target is None or ratio is None else ("yes" if ratio <= target else "NO")
        lines.append(f"| {name} | {what} | {_fmt(row['moorage'], kib)} | "
                     f"{_fmt(row['containerd'], kib)} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} | "
                     f"{target if target is not None else 'report'} | {met} |")
    lines += _tree_cpu_lines(res)
    if res.get("perf"):
        lines += _perf_lines(res["perf"])
    if "error" in res:
        lines += ["", f"Error: {res['error'][:500]}"]
    return "\n".join(lines) + "\n"


def _tree_cpu_lines(res: dict[str, Any]) -> list[str]:
    """CPU of each daemon's tree (medians), per pod for the pod figures."""
    rows = []
    for fig, per in (("pods_up", res.get("pods", 1)), ("pods_down", res.get("pods", 1)),
                     ("exec_sync", res.get("execs", 1))):
        node = res.get(fig, {})
        got = {n: node.get(n, {}).get("tree_cpu_median") for n in ("moorage", "containerd")}
        own = {n: node.get(n, {}).get("daemon_cpu_median") for n in ("moorage", "containerd")}
        if got["moorage"] is None or got["containerd"] is None:
            continue
        unit = "pod" if fig.startswith("pods") else "exec"
        m, c = got["moorage"] / per * 1e3, got["containerd"] / per * 1e3
        rows.append(f"| {fig} | ms per {unit} | {m:.1f} ({own['moorage'] / per * 1e3:.1f}) | "
                    f"{c:.1f} ({own['containerd'] / per * 1e3:.1f}) | {m / c:.2f} |")
        both = {n: node.get(n, {}).get("tree_and_pods_cpu_median")
                for n in ("moorage", "containerd")}
        if both["moorage"] is not None and both["containerd"]:
            m, c = both["moorage"] / per * 1e3, both["containerd"] / per * 1e3
            rows.append(f"| {fig}, with the pods' cgroups | ms per pod | {m:.1f} | {c:.1f} | "
                        f"{m / c:.2f} |")
    if not rows:
        return []
    return ["", "CPU of the daemon and every process it started (its cpuacct group; what "
            "runs in the pods' and containers' cgroups left out, then added), medians; in "
            "brackets the daemon's own:", "",
            "| figure | unit | moorage | containerd | ratio |", "|---|---|---|---|---|", *rows]


def _perf_lines(perf: dict[str, Any]) -> list[str]:
    """The perf pass as tables: CPU ms per pod by role, execs per pod by binary."""
    lines: list[str] = []
    for fig in ("pods_up", "pods_down"):
        cpu = {name: perf[name][fig]["cpu_ms"] for name in perf}
        roles = [*sorted({r for v in cpu.values() for r in v if r != "total"}), "total"]
        names = sorted(cpu)
        lines += ["", f"CPU ms per pod, {fig} under perf (lost chunks: "
                  + ", ".join(f"{n} {perf[n][fig]['lost_chunks']}" for n in names) + "; wall: "
                  + ", ".join(f"{n} {perf[n][fig]['wall']:.3f} s" for n in names) + "):", "",
                  "| role | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {r} | " + " | ".join(f"{cpu[n].get(r, 0):.1f}" for n in names) + " |"
                  for r in roles]
        execs = {name: perf[name][fig]["execs"] for name in perf}
        binaries = sorted({b for v in execs.values() for b in v})
        lines += ["", f"Execs per pod, {fig}:", "",
                  "| binary | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {b} | " + " | ".join(f"{execs[n].get(b, 0):g}" for n in names) + " |"
                  for b in binaries]
    return lines


def _loads(results: dict[str, Any]) -> list[float]:
    return [s["load"] for fig in ("pods_up", "exec_sync", "exec_stream", "exec_websocket",
                                  "pods_down")
            for node in results.get(fig, {}).values() for s in node.get("samples", [])]


def main() -> int:
    """Measure, write benchmarks/results/cri-<stamp>.{json,md}, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--rss-reps", type=int, default=3)
    parser.add_argument("--perf", action="store_true",
                        help="one more pods_up and pods_down per daemon under perf: CPU per "
                             "pod of each process role, execs per pod")
    parser.add_argument("--share-pid", action="store_true",
                        help="pods share their PID namespace (NamespaceOption.pid POD; "
                             "default CONTAINER, the kubelet's)")
    parser.add_argument("--install", choices=("venv", "editable"), default="venv",
                        help="measure a wheel of this tree in the benchmark's venv "
                             "(harness/install.py) or the development install")
    args = parser.parse_args()
    started = time.monotonic()
    CriClient.share_pid = args.share_pid
    if args.install == "venv":
        from harness.install import venv_bin

        CriMoorage.bin_dir = venv_bin()
    try:
        results = measure_cri(args.reps, args.pods, args.execs, args.rss_reps, perf=args.perf)
    except Exception as exc:
        traceback.print_exc()
        results = {"error": f"{type(exc).__name__}: {exc}"}
    loads = _loads(results) or [loadavg()]
    import subprocess

    record = {
        "date": datetime.now(UTC).isoformat(),
        "containerd": subprocess.run(["containerd", "--version"], capture_output=True,
                                     text=True).stdout.split()[2],
        "install": args.install,
        "share_pid": args.share_pid,
        "load": {"min": min(loads), "max": max(loads), "median": statistics.median(loads)},
        "results": results,
        "ratios": cri_ratios(results),
        "seconds": round(time.monotonic() - started, 1),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"cri-{stamp}.json").write_text(json.dumps(record, indent=2))
    markdown = render(record)
    (out / f"cri-{stamp}.md").write_text(markdown)
    print(markdown)
    return 0 if "error" not in results else 1


if __name__ == "__main__":
    sys.exit(main())
