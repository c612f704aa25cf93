"""Time ingesting a 1 GiB blob into ``ContentStore`` against ``sha256sum`` on the same file.

Usage: ``python benchmarks/bench_content.py [--mib 1024] [--chunk-kib 1024] [--reps 3]
[--backend asyncio|trio]``

The input is random data in ``/tmp`` (created once, reused while its size matches). Both sides
read it from the page cache: ``sha256sum`` is run once untimed to warm the cache. The store side
is a loop of ``writer.write(chunk)`` followed by ``commit`` (which fsyncs), into a fresh store
root under ``/tmp`` per run: direct calls, no HTTP. Medians of ``--reps`` runs are compared;
the target is a ratio of at least 0.6.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio

from runtime.plugins.content.local.store import ContentStore

MIB = 1 << 20


def make_input(path: Path, mib: int) -> None:
    """Write ``mib`` MiB of random bytes to ``path`` unless it already has that size."""
    if path.exists() and path.stat().st_size == mib * MIB:
        return
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def time_sha256sum(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, "sha256:" + out.stdout.split()[0]


async def ingest(path: Path, root: Path, chunk: int) -> tuple[float, str]:
    store = ContentStore(root)
    start = time.perf_counter()
    writer = await store.open_writer("bench", total=path.stat().st_size)
    with path.open("rb", buffering=0) as f:
        while data := f.read(chunk):
            await writer.write(data)
    digest = await writer.commit()
    return time.perf_counter() - start, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument(
        "--input", type=Path, default=Path(tempfile.gettempdir()) / "moorage-bench-content.bin"
    )
    args = parser.parse_args()

    make_input(args.input, args.mib)
    size_mb = args.input.stat().st_size / 1e6
    time_sha256sum(args.input)  # warm the page cache for both sides

    sums, ingests = [], []
    for _ in range(args.reps):
        elapsed, expected = time_sha256sum(args.input)
        sums.append(elapsed)
        root = Path(tempfile.mkdtemp(prefix="moorage-bench-content-"))
        try:
            elapsed, digest = anyio.run(
                ingest, args.input, root, args.chunk_kib * 1024, backend=args.backend
            )
        finally:
            shutil.rmtree(root)
        assert digest == expected, (digest, expected)
        ingests.append(elapsed)
        print(f"  sha256sum {size_mb / sums[-1]:7.1f} MB/s   ingest {size_mb / elapsed:7.1f} MB/s")

    sum_rate = size_mb / statistics.median(sums)
    ingest_rate = size_mb / statistics.median(ingests)
    print(f"input: {args.input} ({size_mb:.0f} MB), chunk {args.chunk_kib} KiB")
    print(f"backend: {args.backend}")
    print(f"sha256sum:           {sum_rate:8.1f} MB/s")
    print(f"ContentStore ingest: {ingest_rate:8.1f} MB/s (write + commit incl. fsync)")
    print(f"ratio:               {ingest_rate / sum_rate:8.2f} (target >= 0.6)")


if __name__ == "__main__":
    main()
