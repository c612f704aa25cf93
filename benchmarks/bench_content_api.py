"""Time ``moorage content ingest REF < file`` through a real daemon against ``sha256sum``.

Usage: ``python benchmarks/bench_content_api.py [--mib 1024] [--reps 3] [--keep-input]``

The input is ``--mib`` MiB of random data in ``/tmp``, removed at the end (unless
``--keep-input``). The script starts its own daemon (root and state in a temporary
directory) and, for each rep, times ``sha256sum FILE`` and then ``moorage content ingest
--lease bench bench-N < FILE`` (a fresh ref each time: CLI start-up, the chunked PUT over
the unix socket, the daemon's write + hash, and commit with its fsync). Ingests hold a
lease, as real clients do; the blob is deleted between reps so that every ingest really
writes. ``sha256sum`` runs once untimed first, so both sides read the input from the page
cache. Medians are compared; the target is an ingest throughput of at least 0.6 of
``sha256sum``'s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
TARGET = 0.6
# Ingests run under a lease, as real clients do, so the daemon's garbage collector
# leaves the blob alone until the script deletes it.
LEASE = "bench"
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.daemon import Daemon  # noqa: E402


def make_input(path: Path, mib: int) -> None:
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def time_sha256sum(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, "sha256:" + out.stdout.split()[0]


def time_ingest(address: str, ref: str, path: Path) -> tuple[float, str]:
    cmd = [
        sys.executable,
        "-m",
        "runtime.cli.main",
        "--address",
        address,
        "content",
        "ingest",
        "--lease",
        LEASE,
        ref,
    ]
    with path.open("rb") as stdin:
        start = time.perf_counter()
        out = subprocess.run(cmd, stdin=stdin, check=True, capture_output=True, text=True, cwd=REPO)
        elapsed = time.perf_counter() - start
    return elapsed, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep-input", action="store_true", help="do not remove the input")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="moorage-bench-api-"))
    fd, name = tempfile.mkstemp(prefix="moorage-bench-api-", suffix=".bin", dir="/tmp")
    os.close(fd)
    data = Path(name)
    daemon = Daemon(work / "daemon")
    try:
        make_input(data, args.mib)
        size_mb = data.stat().st_size / 1e6
        daemon.start()
        client = daemon.client()
        client.create_lease(LEASE)
        time_sha256sum(data)  # warm the page cache for both sides

        sums: list[float] = []
        ingests: list[float] = []
        for rep in range(args.reps):
            elapsed, expected = time_sha256sum(data)
            sums.append(elapsed)
            elapsed, digest = time_ingest(daemon.address, f"bench-{rep}", data)
            if digest != expected:
                raise SystemExit(f"ingest gave {digest}, sha256sum {expected}")
            ingests.append(elapsed)
            client.delete_content(digest)
            print(
                f"  rep {rep + 1}: sha256sum {size_mb / sums[-1]:7.1f} MB/s   "
                f"moorage content ingest {size_mb / ingests[-1]:7.1f} MB/s",
                flush=True,
            )

        sum_rate = size_mb / statistics.median(sums)
        ingest_rate = size_mb / statistics.median(ingests)
        ratio = ingest_rate / sum_rate
        print(f"input: {data} ({size_mb:.0f} MB), {args.reps} reps, medians")
        print(f"sha256sum:              {sum_rate:8.1f} MB/s")
        print(f"moorage content ingest: {ingest_rate:8.1f} MB/s (CLI + HTTP + write + commit)")
        print(f"ratio:                  {ratio:8.2f} (target >= {TARGET})")
    finally:
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep_input:
            data.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
