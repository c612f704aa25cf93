"""What each module the daemon imports costs: resident memory and CPU, module by module.

``python benchmarks/import_cost.py [--python PY] [--top 40]``

Starts ``moorage daemon`` (with the interpreter ``--python``: the benchmark's
venv for the installed product) in a fresh process whose import machinery is
wrapped: around each module's load, ``VmRSS`` from ``/proc/self/status`` and
the process's CPU time are read. A module's *own* cost is its load minus the
loads of the modules it imported meanwhile, so the own costs add up to what
the imports cost in all; *with deps* is the whole load, the modules imported
for it included (what importing it first costs). The daemon runs as it always
does (the same import order, the same environment tricks around aiohttp); the
script waits until it answers ``GET /v1/version``, one second more, then
stops it and prints the table, grouped by top-level package too. A page is
4 KiB, so a small module reads as 0 or 4 KiB; the sums are what to compare.

Results go to ``benchmarks/results/imports-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Runs inside the measured daemon process, before anything else is imported.
CHILD = r"""
import atexit, json, sys, time
import importlib._bootstrap as bootstrap

def rss():
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0

records, stack = [], []
start_rss, start_cpu = rss(), time.process_time()
original = bootstrap._load_unlocked

def measured(spec):
    r0, c0 = rss(), time.process_time()
    stack.append([0, 0.0, spec.name])
    try:
        return original(spec)
    finally:
        kids_rss, kids_cpu, _ = stack.pop()
        d_rss, d_cpu = rss() - r0, time.process_time() - c0
        if stack:
            stack[-1][0] += d_rss
            stack[-1][1] += d_cpu
        records.append({"module": spec.name, "own_kb": d_rss - kids_rss,
                        "own_cpu": d_cpu - kids_cpu, "with_deps_kb": d_rss,
                        "with_deps_cpu": d_cpu, "by": stack[-1][2] if stack else ""})

bootstrap._load_unlocked = measured
out = sys.argv.pop(1)

def dump():
    with open(out, "w") as f:
        json.dump({"start_rss_kb": start_rss, "start_cpu": start_cpu, "end_rss_kb": rss(),
                   "end_cpu": time.process_time(), "records": records}, f)

atexit.register(dump)
sys.argv[0] = "moorage"
from runtime.cli.main import main
sys.exit(main())
"""


def answered(path: Path) -> bool:
    """Whether the daemon at ``path`` answers ``GET /v1/version``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /v1/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def measure(python: str) -> dict[str, Any]:
    """Run the daemon once under the import hook; the raw records."""
    base = Path(tempfile.mkdtemp(prefix="imports-", dir="/var/tmp"))
    try:
        sock = base / "moorage.sock"
        config = base / "plugins.toml"
        config.write_text(f'version = 1\nroot = "{base}/root"\nstate = "{base}/state"\n'
                          f'[api]\naddress = "{sock}"\n')
        out = base / "imports.json"
        proc = subprocess.Popen([python, "-c", CHILD, str(out), "daemon", "--config",
                                 str(config), "--log-level", "warning"], cwd="/")
        try:
            deadline = time.monotonic() + 60
            while not answered(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not answer")
                time.sleep(0.01)
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return dict(json.loads(out.read_text()))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def group_of(module: str) -> str:
    """The table's group: a Moorage area (``runtime.plugins.gc``) or a top-level package."""
    parts = module.split(".")
    if parts[0] == "runtime":
        return ".".join(parts[:3]) if parts[1:2] == ["plugins"] else ".".join(parts[:2])
    return parts[0]


def render(raw: dict[str, Any], top: int) -> str:
    """Markdown: the heaviest modules by own RSS, then the groups."""
    recs = raw["records"]
    by = {r["module"]: r["by"] for r in recs}

    def chain(name: str) -> str:
        seen = [name]
        while by.get(seen[-1]) and len(seen) < 4:
            seen.append(by[seen[-1]])
        return " < ".join(seen[1:]) or "(top level)"

    lines = [f"interpreter at hook install: {raw['start_rss_kb']:,} KiB; daemon idle: "
             f"{raw['end_rss_kb']:,} KiB; modules loaded: {len(recs)}; own RSS of all: "
             f"{sum(r['own_kb'] for r in recs):,} KiB; CPU of all imports: "
             f"{sum(r['own_cpu'] for r in recs) * 1000:.0f} ms", "",
             "| module | own KiB | own CPU ms | with deps KiB | with deps CPU ms | imported by |",
             "|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: -r["own_kb"])[:top]:
        lines.append(f"| `{r['module']}` | {r['own_kb']:,} | {r['own_cpu'] * 1000:.1f} | "
                     f"{r['with_deps_kb']:,} | {r['with_deps_cpu'] * 1000:.1f} | "
                     f"{chain(r['module'])} |")
    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for r in recs:
        g = groups[group_of(r["module"])]
        g[0] += r["own_kb"]
        g[1] += r["own_cpu"]
        g[2] += 1
    lines += ["", "| group | modules | own KiB | own CPU ms |", "|---|---|---|---|"]
    for name, (kb, cpu, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{name}` | {n} | {kb:,} | {cpu * 1000:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter with Moorage installed (default: this one)")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    raw = measure(args.python)
    raw["python"] = args.python
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"imports-{stamp}.json").write_text(json.dumps(raw, indent=1))
    print(render(raw, args.top))
    print(f"\nwritten: benchmarks/results/imports-{stamp}.json (load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
