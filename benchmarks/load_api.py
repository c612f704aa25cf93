"""Load on the admin API: many clients, many containers, a large image store.

Usage::

    python benchmarks/load_api.py [--clients 200] [--seconds 60] [--containers 100]
                                  [--images 10000] [--only api,containers,images] [--json F]

Three parts, each against a fresh daemon of its own, each bounded in count and time:

* **api**: ``--clients`` concurrent clients on the unix socket for ``--seconds`` of mixed
  reads and writes (small content ingests under leases, lease create/delete, namespace
  labels, lists of content, leases and namespaces). Every answer must be a success; p50
  and p99 latency per operation and overall are reported.
* **containers**: ``--containers`` busybox ``sleep`` containers started with
  ``moorage run -d --rootfs`` (no network), all running at once, then killed, deleted
  and checked for leftovers (mounts, runtime state, monitors).
* **images**: ``--images`` image records inserted through the API, then listed whole and
  with filters (by name regex, by label); p50/p99 of each listing.

Prints a summary and, with ``--json``, writes the figures (docs/reliability.md quotes
them). Exit status 1 if any request failed or anything was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.daemon import Daemon  # noqa: E402

#: No collection runs by itself during the load: ingests under leases would survive it
#: anyway, and the API part measures the API, not the collector.
QUIET = """
[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000
"""
NAMESPACES = 20


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summarize(latencies: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Count, p50, p99 and max (milliseconds) per operation, and ``all``."""
    every = [v for values in latencies.values() for v in values]
    out = {}
    for name, values in sorted({**latencies, "all": every}.items()):
        out[name] = {"count": len(values), "p50_ms": percentile(values, 0.5) * 1e3,
                     "p99_ms": percentile(values, 0.99) * 1e3,
                     "max_ms": max(values, default=0.0) * 1e3}
    return out


# -- api --------------------------------------------------------------------------------


class _Load:
    """The mixed workload of one run: clients share the session, each loops until the end."""

    def __init__(self, session: aiohttp.ClientSession, deadline: float) -> None:
        self.session = session
        self.deadline = deadline
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.counter = 0

    async def _call(self, op: str, method: str, path: str, ns: str, *,
                    data: bytes | None = None, body: Any = None,
                    headers: dict[str, str] | None = None) -> Any:
        hdrs = {"Moorage-Namespace": ns, **(headers or {})}
        started = time.monotonic()
        try:
            async with self.session.request(method, f"http://moorage{path}", data=data,
                                            json=body, headers=hdrs) as resp:
                payload = await resp.read()
                if resp.status >= 400:
                    self.errors.append(f"{op}: {resp.status} {payload[:200]!r}")
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors.append(f"{op}: {type(exc).__name__}: {exc}")
            return None
        self.latencies[op].append(time.monotonic() - started)
        return json.loads(payload) if payload else None

    async def client(self, number: int) -> None:
        rng = random.Random(number)
        ns = f"load{number % NAMESPACES}"
        lease = f"lease-{number}"
        await self._call("lease.create", "POST", "/v1/leases", ns, body={"id": lease})
        while time.monotonic() < self.deadline:
            self.counter += 1
            roll = rng.random()
            if roll < 0.25:
                data = os.urandom(rng.randint(256, 4096))
                await self._call("content.ingest", "PUT",
                                 f"/v1/content/ingests/c{number}-{self.counter}?commit=1", ns,
                                 data=data, headers={"Moorage-Lease": lease,
                                                     "Content-Type": "application/octet-stream"})
            elif roll < 0.50:
                await self._call("content.list", "GET", "/v1/content", ns)
            elif roll < 0.62:
                await self._call("leases.list", "GET", "/v1/leases", ns)
            elif roll < 0.72:
                tmp = f"tmp-{number}-{self.counter}"
                if await self._call("lease.create", "POST", "/v1/leases", ns,
                                    body={"id": tmp}) is not None:
                    await self._call("lease.delete", "DELETE", f"/v1/leases/{tmp}", ns)
            elif roll < 0.82:
                await self._call("namespace.label", "PATCH", f"/v1/namespaces/{ns}", ns,
                                 body={"labels": {f"client{number}": str(self.counter)}})
            elif roll < 0.92:
                await self._call("namespaces.list", "GET", "/v1/namespaces", ns)
            else:
                await self._call("snapshots.list", "GET", "/v1/snapshots/native", ns)


async def _api_load(socket_path: str, clients: int, seconds: float) -> _Load:
    connector = aiohttp.UnixConnector(path=socket_path, limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for i in range(NAMESPACES):
            async with session.post("http://moorage/v1/namespaces",
                                    json={"name": f"load{i}"}) as resp:
                await resp.read()
        load = _Load(session, time.monotonic() + seconds)
        await asyncio.gather(*(load.client(i) for i in range(clients)))
    return load


def run_api(workdir: Path, clients: int, seconds: float) -> dict[str, Any]:
    """The mixed API load; returns figures (``errors`` must be empty)."""
    with Daemon(workdir / "api", QUIET) as daemon:
        started = time.monotonic()
        load = asyncio.run(_api_load(str(daemon.socket_path), clients, seconds))
        elapsed = time.monotonic() - started
        healthy = daemon.client().healthz().status == "ok"
    ops = summarize(load.latencies)
    return {"clients": clients, "seconds": round(elapsed, 1),
            "requests": ops["all"]["count"],
            "requests_per_second": round(ops["all"]["count"] / elapsed, 1),
            "errors": load.errors[:50], "error_count": len(load.errors),
            "healthy_after": healthy, "latency": ops}


# -- containers -----------------------------------------------------------------------


def _moorage(address: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "--address", address,
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


def run_containers(workdir: Path, count: int) -> dict[str, Any]:
    """``count`` containers running at once via ``moorage run -d``, then all removed."""
    from tests.plugins.runtime.helpers import make_rootfs
    from tests.reliability.store_check import check_store

    rootfs = make_rootfs(workdir / "rootfs")
    problems: list[str] = []
    with Daemon(workdir / "containers", QUIET) as daemon:
        api = daemon.client()
        started = time.monotonic()

        def start(i: int) -> str:
            done = _moorage(daemon.address, "run", "-d", "--net", "none", "--rootfs",
                            str(rootfs), "--name", f"c{i}", "busybox", "sleep", "1000")
            return "" if done.returncode == 0 else f"c{i}: {done.stderr.strip()}"

        with ThreadPoolExecutor(4) as pool:
            problems += [p for p in pool.map(start, range(count)) if p]
        start_seconds = time.monotonic() - started
        running = [t for t in api.tasks() if t.status == "running"]
        alive = sum(1 for t in running if Path(f"/proc/{t.pid}").exists())
        started = time.monotonic()

        def remove(i: int) -> str:
            try:
                api.kill_task(f"c{i}", "KILL")
                api.wait_task(f"c{i}", timeout=60)
                api.delete_task(f"c{i}")
                api.delete_container(f"c{i}")
            except Exception as exc:  # reported, not raised: the rest must still go
                return f"c{i}: {exc}"
            return ""

        with ThreadPoolExecutor(8) as pool:
            problems += [p for p in pool.map(remove, range(count)) if p]
        remove_seconds = time.monotonic() - started
        report = check_store(daemon)
        problems += report.problems
        left = len(api.tasks()) + len(api.containers())
    return {"containers": count, "running_at_once": len(running), "alive": alive,
            "start_seconds": round(start_seconds, 1), "remove_seconds": round(remove_seconds, 1),
            "left_after": left, "problems": problems[:50]}


# -- images -----------------------------------------------------------------------------


async def _insert_images(socket_path: str, count: int, target: dict[str, Any]) -> list[float]:
    connector = aiohttp.UnixConnector(path=socket_path, limit=32)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = {"name": f"registry.test/load/app{i // 100}:v{i}", "target": target,
                        "labels": {"team": f"t{i % 10}", "tier": "gold" if i % 100 == 0
                                   else "std"}}
                started = time.monotonic()
                async with session.post("http://moorage/v1/images", json=body) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"image {i}: {resp.status}")
                latencies.append(time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(32)))
    return latencies


def run_images(workdir: Path, count: int, repeats: int = 10) -> dict[str, Any]:
    """``count`` image records over one manifest, listed with and without filters."""
    from tests.reliability.blobs import Member, memory_image, raw_layer

    with Daemon(workdir / "images", QUIET) as daemon:
        api = daemon.client()
        image = memory_image([raw_layer([Member("f", data=b"load")])])
        lease = api.create_lease("images").id
        for digest, data in image.blobs.items():
            api.write_content(f"blob-{digest}", data, commit=True, expected=digest, lease=lease)
        target = {"mediaType": image.root.media_type, "digest": image.root.digest,
                  "size": image.root.size}
        started = time.monotonic()
        inserts = asyncio.run(_insert_images(str(daemon.socket_path), count, target))
        insert_seconds = time.monotonic() - started
        queries = {"all": [], "name~=app7[0-9]:": ['name~="app7[0-9]:"'],
                   "labels.tier==gold": ["labels.tier==gold"],
                   "labels.team==t3,name~=v1": ['labels.team==t3,name~="v1"']}
        figures: dict[str, Any] = {}
        for label, filters in queries.items():
            times, found = [], 0
            for _ in range(repeats):
                t0 = time.monotonic()
                found = len(api.images(filters))
                times.append(time.monotonic() - t0)
            figures[label] = {"found": found, "p50_ms": percentile(times, 0.5) * 1e3,
                              "p99_ms": percentile(times, 0.99) * 1e3}
    return {"images": count, "insert_seconds": round(insert_seconds, 1),
            "insert_p50_ms": percentile(inserts, 0.5) * 1e3,
            "insert_p99_ms": percentile(inserts, 0.99) * 1e3, "lists": figures}


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--only", default="api,containers,images")
    parser.add_argument("--json", default="", help="write the figures to this file")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="moorage-load-"))
    results: dict[str, Any] = {}
    try:
        if "api" in parts:
            results["api"] = run_api(workdir, args.clients, args.seconds)
        if "containers" in parts:
            results["containers"] = run_containers(workdir, args.containers)
        if "images" in parts:
            results["images"] = run_images(workdir, args.images)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    failed = (results.get("api", {}).get("error_count", 0)
              or results.get("containers", {}).get("problems")
              or results.get("containers", {}).get("left_after"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
