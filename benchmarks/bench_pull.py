"""Cold pull + unpack of a ~200 MB image: Moorage against containerd 1.6 (``ctr images pull``).

Usage: ``python benchmarks/bench_pull.py [--reps 3] [--cache DIR] [--skip-containerd]``

The image is built once (cached in ``--cache``) from directories of this host, as five gzip
layers of a typical application image: interpreter libraries (many small files), a compiler
tree (fewer, bigger files), locale data, node modules and a small top layer with whiteouts.
Both daemons pull it from the same local ``docker-registry`` over plain HTTP into a fresh root
each repetition, unpacking into overlayfs; the medians are compared. Needs root.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.daemon import Daemon
from tests.fixtures.images import (
    MEDIA_TYPE_LAYER_GZIP,
    Layer,
    LayerBuilder,
    build_image,
    host_platform,
)
from tests.fixtures.registry import Registry

LAYERS: tuple[tuple[str, ...], ...] = (
    ("/usr/lib/python3", "/usr/lib/python3.11", "/usr/share/perl"),
    ("/usr/lib/gcc",),
    ("/usr/share/locale",),
    ("/usr/lib/node_modules", "/usr/lib/git-core", "/usr/lib/postgresql"),
)
REF_NAME = "bench"


def settle() -> None:
    """Start each run from the same state: nothing dirty, no pending discards, cold caches.

    The root file system here is mounted with ``discard``: removing the previous run's tree
    queues TRIMs that later journal commits carry out, and file creation stalls behind them
    for tens of seconds. Without this, run-to-run noise exceeds the difference measured.
    """
    os.sync()
    time.sleep(1)
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def _tar_dirs(dirs: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            if os.path.isdir(d):
                tar.add(d, arcname=d.lstrip("/"), recursive=True)
    return buf.getvalue()


def _layer(raw: bytes, comment: str) -> Layer:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    data = out.getvalue()
    from tests.fixtures.images import Descriptor

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Layer(
        Descriptor(MEDIA_TYPE_LAYER_GZIP, digest, len(data)),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
        data,
        comment,
    )


def build(cache: Path) -> Path:
    """Build (once) the benchmark image as an OCI layout in ``cache``."""
    # Keyed by the layer list, so changing it rebuilds.
    key = hashlib.sha256(repr(LAYERS).encode()).hexdigest()[:12]
    layout = cache / f"layout-{key}"
    if (layout / "index.json").exists():
        return layout
    layers = [_layer(_tar_dirs(dirs), f"bench {' '.join(dirs)}") for dirs in LAYERS]
    top = (
        LayerBuilder(comment="bench app")
        .dir("app")
        .file("app/config", "x=1\n")
        .whiteout("usr/lib/gcc/x86_64-linux-gnu/12/plugin")
        .opaque("usr/share/locale/de")
    )
    layers.append(top.build())
    tmp = cache / f"layout-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_image(tmp, layers, platform=host_platform(), ref_name=REF_NAME, cmd=["sh"])
    tmp.rename(layout)
    return layout


def _sizes(layout: Path) -> tuple[int, int]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return len(manifest["layers"]), sum(x["size"] for x in manifest["layers"])


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def moorage_pull(work: Path, ref: str) -> tuple[float, float, dict[str, float]]:
    """One cold pull with a fresh daemon root; returns (seconds, CPU seconds, timings)."""
    daemon = Daemon(work / "moorage").start()
    settle()
    try:
        assert daemon.proc is not None
        client = daemon.client()
        cpu = _cpu(daemon.proc.pid)
        started = time.monotonic()
        done = None
        for event in client.pull(ref, plain_http=True):
            done = event
        elapsed = time.monotonic() - started
        return elapsed, _cpu(daemon.proc.pid) - cpu, dict(getattr(done, "timings", {}))
    finally:
        daemon.close()
        shutil.rmtree(work / "moorage", ignore_errors=True)


_CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
"""


def containerd_pull(work: Path, ref: str) -> tuple[float, float]:
    """One cold ``ctr images pull`` (fetch + unpack into overlayfs) with a fresh root.

    Returns (seconds, CPU seconds of containerd and ctr together: ctr downloads,
    containerd stores and unpacks).
    """
    root, state = work / "containerd-root", Path(tempfile.mkdtemp(prefix="ctd"))
    sock = state / "c.sock"
    config = work / "containerd.toml"
    config.write_text(_CONTAINERD_CONFIG.format(root=root, state=state, sock=sock))
    log = (work / "containerd.log").open("wb")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                ["ctr", "-a", str(sock), "version"], capture_output=True, check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("containerd did not start; see " + str(work))
            time.sleep(0.1)
        settle()
        cpu = _cpu(proc.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        subprocess.run(
            ["ctr", "-a", str(sock), "-n", "bench", "images", "pull", "--plain-http", ref],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ctr = after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
        return elapsed, _cpu(proc.pid) - cpu + ctr
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        subprocess.run(["umount", "-R", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/moorage-bench-pull"))
    parser.add_argument("--skip-containerd", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    layout = build(args.cache)
    count, size = _sizes(layout)
    print(
        f"image: {count} layers, {size / 1e6:.0f} MB compressed "
        f"(built/cached in {time.monotonic() - t:.1f}s)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-pull-", dir="/var/tmp") as tmpdir:
        work = Path(tmpdir)
        with Registry(work / "registry") as registry:
            ref = registry.push_layout(layout, REF_NAME, "bench/app:latest")
            ours: list[tuple[float, float]] = []
            theirs: list[tuple[float, float]] = []
            # Alternating runs: whatever else loads the machine hits both alike.
            for rep in range(args.reps):
                seconds, cpu, timings = moorage_pull(work, ref)
                ours.append((seconds, cpu))
                print(f"moorage    run {rep + 1}: {seconds:6.2f}s  cpu {cpu:6.2f}s  {timings}")
                if not args.skip_containerd:
                    theirs.append(containerd_pull(work, ref))
                    print(
                        f"containerd run {rep + 1}: {theirs[-1][0]:6.2f}s  "
                        f"cpu {theirs[-1][1]:6.2f}s"
                    )
    wall, cpu = (statistics.median(x[i] for x in ours) for i in (0, 1))
    print(f"moorage    median {wall:.2f}s, cpu {cpu:.2f}s")
    if theirs:
        ref_wall, ref_cpu = (statistics.median(x[i] for x in theirs) for i in (0, 1))
        print(f"containerd median {ref_wall:.2f}s, cpu {ref_cpu:.2f}s")
        print(f"ratio: wall {wall / ref_wall:.2f}, cpu {cpu / ref_cpu:.2f} (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
