"""Time ``apply_layer`` against ``tar -xzf`` on a ~150 MB gzip layer of ~5,000 files.

Usage: ``python benchmarks/bench_apply.py [--files 5000] [--mib 150] [--reps 3] [--keep FILE]
[--dir DIR]``

The layer is generated deterministically (fixed seed) in a temporary directory. File contents are
random bytes over a 16-symbol alphabet, so gzip shrinks them to a bit over half, like real binaries.
Each run extracts into a fresh directory; runs alternate between the contenders, with a sync
before each, and the medians of ``--reps`` runs are compared (wall time, and CPU time of all
threads or child processes).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# 4 bits of entropy per byte: compresses to ~55-60 %, close to typical layer contents.
_ALPHABET = bytes(range(0x30, 0x40)) * 16
_TABLE = bytes(_ALPHABET[i] for i in range(256))


def make_layer(path: Path, *, files: int, mib: int, seed: int = 1234) -> int:
    """Write a deterministic gzip layer to ``path``; return the uncompressed tar size."""
    rng = random.Random(seed)
    # Aim at ``mib`` MiB compressed; the alphabet compresses to roughly 0.57.
    total = int(mib * 1024 * 1024 / 0.57)
    # Log-normal sizes (many small files, a few big ones), scaled to the total.
    raw = [rng.lognormvariate(9.0, 1.8) for _ in range(files)]
    scale = total / sum(raw)
    sizes = [max(0, int(s * scale)) for s in raw]
    dirs = [f"usr/lib/pkg{i // 40:03d}/sub{i % 7}" for i in range(files)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        seen: set[str] = set()
        for d in sorted(set(dirs)):
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                p = "/".join(parts[:i])
                if p not in seen:
                    seen.add(p)
                    ti = tarfile.TarInfo(p)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tf.addfile(ti)
        for i, (d, size) in enumerate(zip(dirs, sizes, strict=True)):
            ti = tarfile.TarInfo(f"{d}/file{i:05d}.so")
            ti.size, ti.mode, ti.mtime = size, 0o644 if i % 9 else 0o755, 1_700_000_000 + i
            ti.uid = ti.gid = 0
            tf.addfile(ti, io.BytesIO(rng.randbytes(size).translate(_TABLE)))
            if i % 50 == 0:
                ln = tarfile.TarInfo(f"{d}/link{i:05d}.so")
                ln.type, ln.linkname = tarfile.SYMTYPE, f"file{i:05d}.so"
                tf.addfile(ln)
            if i % 97 == 0:
                hl = tarfile.TarInfo(f"{d}/hard{i:05d}.so")
                hl.type, hl.linkname = tarfile.LNKTYPE, f"{d}/file{i:05d}.so"
                # A hardlink header carries the inode's metadata, as tar writers emit it.
                hl.mode, hl.mtime = ti.mode, ti.mtime
                tf.addfile(hl)
    data = buf.getvalue()
    # zlib level 6 through the gzip wrapper (wbits=31) is what docker/containerd produce.
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        view = memoryview(data)
        for off in range(0, len(view), 16 << 20):
            f.write(comp.compress(view[off : off + (16 << 20)]))
        f.write(comp.flush())
    return len(data)


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _run_tar(layer: Path, dest: Path) -> float:
    """Run ``tar -xzf``; return the CPU seconds of tar and its gzip child."""
    before = _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run(["tar", "-xzf", str(layer), "-C", str(dest)], check=True)
    return _cpu(resource.RUSAGE_CHILDREN) - before


def _run_apply(layer: Path, dest: Path) -> float:
    """Run ``apply_layer``; return the CPU seconds of this process (both threads)."""
    from runtime.plugins.diff.walking.apply import apply_layer

    before = _cpu(resource.RUSAGE_SELF)
    with layer.open("rb") as f:
        apply_layer(f, dest, media_type=MEDIA_TYPE)
    return _cpu(resource.RUSAGE_SELF) - before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mib", type=int, default=150)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="reuse (or create and keep) the layer at this path")
    ap.add_argument("--dir", type=Path, help="extract under this directory (default: TMPDIR)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-apply-", dir=args.dir) as tmp:
        work = Path(tmp)
        layer = args.keep or work / "layer.tar.gz"
        t0 = time.perf_counter()
        if not layer.exists():
            make_layer(layer, files=args.files, mib=args.mib)
        print(
            f"layer: {layer.stat().st_size / 2**20:.1f} MiB gzip, {args.files} files "
            f"(prepared in {time.perf_counter() - t0:.1f}s); extracting under {work}"
        )
        layer.read_bytes()  # warm the page cache: both contenders read the blob from memory
        contenders = {"tar -xzf": _run_tar, "apply_layer": _run_apply}
        wall: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for rep in range(args.reps):
            # Alternate who goes first; sync so one run's writeback is not billed to the next.
            order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
            for name in order:
                dest = work / f"out-{rep}-{name.split()[0]}"
                dest.mkdir()
                os.sync()
                t = time.perf_counter()
                cpu[name].append(contenders[name](layer, dest))
                wall[name].append(time.perf_counter() - t)
                shutil.rmtree(dest)
        for name in contenders:
            print(
                f"{name:12} wall median {statistics.median(wall[name]):.3f}s "
                f"runs {[round(t, 3) for t in wall[name]]}  "
                f"cpu median {statistics.median(cpu[name]):.3f}s"
            )
        ratio = statistics.median(wall["apply_layer"]) / statistics.median(wall["tar -xzf"])
        print(f"ratio apply_layer/tar (wall medians) = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
