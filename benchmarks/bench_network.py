"""Measure a task's network setup and teardown, as the runtime calls them, per mode.

Usage: ``python benchmarks/bench_network.py [--reps 200] [--modes none,host]
[--oci runc]`` (as root, with the CNI plugins in ``/usr/lib/cni``)

For each mode, ``--reps`` times: ``setup_task_network`` then
``teardown_task_network`` for a fresh container id, with a real ``CniNetwork``
whose records and namespaces live in a temporary directory. Reported per mode:
the median and mean wall time of the pair and the CPU time it took, of this
process and of its children (CNI plugins). ``bridge`` uses a bridge of its own
(``mbench0``, ``10.91.0.0/24``), removed at the end.

Work moved from the network plugin to the OCI runtime (``--net none`` lets the
runtime create the namespace) does not show up in-process: ``--oci runc`` also
times ``runc run`` of ``true`` in a busybox rootfs, once in a namespace pinned
beforehand (what ``none`` passed to runc before) and once in one runc creates.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.pkg.oci.spec import default_spec
from runtime.plugins.network.api import (
    NETWORK_ANNOTATION,
    setup_task_network,
    teardown_task_network,
)
from runtime.plugins.network.cni import netns
from runtime.plugins.network.cni.conflist import default_conflist
from runtime.plugins.network.cni.service import CniNetwork

NS = "default"
BIN_DIRS = [Path("/usr/lib/cni"), Path("/opt/cni/bin")]


def cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def summary(walls: list[float], own_cpu: float, child_cpu: float) -> dict[str, float]:
    n = len(walls)
    return {"median_ms": round(statistics.median(walls) * 1000, 2),
            "mean_ms": round(statistics.fmean(walls) * 1000, 2),
            "cpu_self_ms": round(own_cpu / n * 1000, 2),
            "cpu_children_ms": round(child_cpu / n * 1000, 2)}


async def measure_mode(service: CniNetwork, mode: str, reps: int, work: Path) -> dict[str, float]:
    walls: list[float] = []
    cpu_before = cpu()
    for i in range(reps):
        container_id = f"bench-{mode}-{i}"
        spec = default_spec(NS, container_id)
        spec["hostname"] = container_id
        spec.setdefault("annotations", {})[NETWORK_ANNOTATION] = mode
        bundle = work / container_id
        start = time.perf_counter()
        await setup_task_network(service, NS, container_id, spec, bundle)
        await teardown_task_network(service, NS, container_id)
        walls.append(time.perf_counter() - start)
        shutil.rmtree(bundle)
    cpu_after = cpu()
    return summary(walls, cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])


def measure_runc(reps: int, work: Path) -> dict[str, dict[str, float]]:
    """``runc run true``: in a namespace pinned beforehand, and in one runc creates."""
    from tests.plugins.runtime.helpers import make_rootfs

    bundle = work / "runc-bundle"
    make_rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["true"]
    pinned = work / "pinned"
    found: dict[str, dict[str, float]] = {}
    for label in ("pinned", "runc"):
        namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
        namespaces.append({"type": "network", "path": str(pinned)} if label == "pinned"
                          else {"type": "network"})
        config["linux"]["namespaces"] = namespaces
        (bundle / "config.json").write_text(json.dumps(config))
        walls: list[float] = []
        cpu_before = cpu()
        for i in range(reps):
            start = time.perf_counter()
            if label == "pinned":
                # Pinning (and unpinning) is part of the price the runtime did not pay.
                netns.create(pinned)
            subprocess.run(["runc", "run", f"bench-net-{i}"], cwd=bundle, check=True)
            if label == "pinned":
                netns.remove(pinned)
            walls.append(time.perf_counter() - start)
        cpu_after = cpu()
        found[f"runc run true, netns {label}"] = summary(
            walls, cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--modes", default="none,host")
    parser.add_argument("--oci", choices=["runc"], help="also time runc's share")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="moorage-bench-net-") as tmp:
        work = Path(tmp)
        conf_dir = work / "net.d"
        conf_dir.mkdir()
        (conf_dir / "10-bench.conflist").write_text(json.dumps(default_conflist(
            name="bench", bridge="mbench0", subnet="10.91.0.0/24",
            ipam_dir=work / "ipam", firewall=False)))
        (work / "netns").mkdir()
        service = CniNetwork(conf_dir=conf_dir, bin_dirs=[d for d in BIN_DIRS if d.is_dir()],
                             default_network="bench", records_dir=work / "attachments",
                             netns_dir=work / "netns")
        # As the plugin's init does: the startup scan of the records.
        await service.cleanup_stale(await service.live_keys())
        try:
            for mode in args.modes.split(","):
                results[mode] = await measure_mode(service, mode, args.reps, work)
            if args.oci:
                results.update(await anyio.to_thread.run_sync(measure_runc, args.reps, work))
        finally:
            subprocess.run(["ip", "link", "delete", "mbench0"], capture_output=True, check=False)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    anyio.run(main)
