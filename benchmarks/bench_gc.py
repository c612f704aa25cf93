"""Measure the garbage collector's pause on a store of 10,000 objects, with writers running.

Usage: ``python benchmarks/bench_gc.py [--objects 10000] [--garbage 300] [--reps 5]
[--synchronous FULL|NORMAL]``

The store is built in a temporary directory: images, each with a manifest, a config and
three layers (content records with ``gc.ref`` labels) and a chain of three committed
snapshots the config refers to, until ``--objects`` records exist. Live objects are records
only: their bytes play no part in the pause. Before each collection, ``--garbage``
unreferenced objects are added, a fifth of them with real bytes (blobs and native
snapshots), plus an expired lease.

During each collection a writer inserts content records in a loop through
``Database.write``, as pulls do, and times every write. Reported per run: the pause (the
exclusive phase: writers held back), every writer-lock hold together, the mark (on a read
snapshot, concurrent with the writer), the whole collection, and the writer's slowest
write. For comparison, the time to load and mark the same store *under* the writer lock,
as a stop-the-world collector would, is measured once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.content.local.tables import CONTENT, ContentSource
from runtime.plugins.gc.collector import Collector
from runtime.plugins.gc.graph import load
from runtime.plugins.gc.locking import timed_write
from runtime.plugins.gc.mark import mark
from runtime.plugins.images.tables import IMAGES, ImageSource
from runtime.plugins.metadata.db import Database
from runtime.plugins.metadata.namespaces import now
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.service.tables import SNAPSHOTS, SnapshotSource

NS = "default"
PAST = "2000-01-01T00:00:00Z"


def fake_digest(*parts: object) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()


def populate(conn: Any, objects: int) -> int:
    """Insert images with their content and snapshot records; return how many records."""
    stamp = now()
    conn.execute("INSERT OR IGNORE INTO namespaces VALUES (?, '{}', ?, ?)", (NS, stamp, stamp))
    content, snapshots, images = [], [], []
    i = 0
    while len(content) + len(snapshots) + len(images) < objects:
        layers = [fake_digest("layer", i, n) for n in range(3)]
        chain = [f"chain-{i}-{n}" for n in range(3)]
        config = fake_digest("config", i)
        manifest = fake_digest("manifest", i)
        for n, layer in enumerate(layers):
            content.append((NS, layer, 1000, "{}", stamp, stamp))
            snapshots.append(
                (
                    NS,
                    "native",
                    chain[n],
                    f"{NS}/x/{chain[n]}",
                    chain[n - 1] if n else "",
                    "committed",
                    "{}",
                    stamp,
                    stamp,
                )
            )
        content.append(
            (
                NS,
                config,
                500,
                json.dumps({"containerd.io/gc.ref.snapshot.native": chain[-1]}),
                stamp,
                stamp,
            )
        )
        content.append(
            (
                NS,
                manifest,
                700,
                json.dumps(
                    {"containerd.io/gc.ref.content.config": config}
                    | {f"containerd.io/gc.ref.content.l.{n}": d for n, d in enumerate(layers)}
                ),
                stamp,
                stamp,
            )
        )
        images.append(
            (
                NS,
                f"registry.example/app-{i}:latest",
                json.dumps(
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest,
                        "size": 700,
                    }
                ),
                "{}",
                stamp,
                stamp,
            )
        )
        i += 1
    conn.executemany("INSERT INTO content VALUES (?,?,?,?,?,?)", content)
    conn.executemany("INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?,?)", snapshots)
    conn.executemany("INSERT INTO images VALUES (?,?,?,?,?,?)", images)
    return len(content) + len(snapshots) + len(images)


async def add_garbage(
    db: Database, store: ContentStore, native: NativeSnapshotter, count: int, rep: int
) -> None:
    """``count`` unreferenced objects, a fifth with real bytes, plus an expired lease."""
    real = count // 5
    digests = []
    for n in range(real // 2):
        writer = await store.open_writer(f"garbage-{rep}-{n}")
        await writer.write(os.urandom(4096))
        digests.append(await writer.commit())
    backend_keys = []
    for n in range(real - real // 2):
        key = f"{NS}/g/{rep}-{n}"
        await native.prepare(key)
        backend_keys.append(key)

    def insert(conn: Any) -> None:
        stamp = now()
        rows = [(NS, d, 4096, "{}", stamp, stamp) for d in digests]
        rows += [
            (NS, fake_digest("garbage", rep, n), 10, "{}", stamp, stamp)
            for n in range(count - real)
        ]
        conn.executemany("INSERT INTO content VALUES (?,?,?,?,?,?)", rows)
        conn.executemany(
            "INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (NS, "native", k.rsplit("/", 1)[1], k, "", "active", "{}", stamp, stamp)
                for k in backend_keys
            ],
        )
        conn.execute(
            "INSERT INTO leases VALUES (?, ?, ?, ?)",
            (NS, f"expired-{rep}", json.dumps({"containerd.io/gc.expire": PAST}), stamp),
        )

    await db.write(insert)


ROOT_LABELS = json.dumps({"containerd.io/gc.root": "1"})


async def writer_loop(db: Database, stop: anyio.Event, latencies: list[float]) -> None:
    """Insert content records back to back (kept: gc.root), timing each write."""
    n = 0
    while not stop.is_set():
        digest = fake_digest("pull", time.time_ns(), n)
        stamp = now()
        started = time.perf_counter()
        await db.write(
            lambda c, d=digest, s=stamp: c.execute(
                "INSERT INTO content VALUES (?,?,?,?,?,?)", (NS, d, 1, ROOT_LABELS, s, s)
            )
        )
        latencies.append(time.perf_counter() - started)
        n += 1


async def idle_writes(db: Database, seconds: float) -> list[float]:
    """The writer's latencies with no collection running: the baseline."""
    latencies: list[float] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer_loop, db, stop, latencies)
        await anyio.sleep(seconds)
        stop.set()
    return latencies


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        root = Path(tmp)
        db = Database(root / "meta.db", synchronous=args.synchronous)
        db.open()
        store = ContentStore(root / "content")
        native = NativeSnapshotter(root / "native")
        # The tables (and GC sources) of the stores whose rows populate() writes.
        db.register(CONTENT, ContentSource(store))
        db.register(SNAPSHOTS, SnapshotSource())
        db.register(IMAGES, ImageSource())
        live = await db.write(lambda c: populate(c, args.objects))
        collector = Collector(db, store, {"native": native})
        print(
            f"store: {live} live records (content, snapshots, images) in one namespace; "
            f"+{args.garbage} garbage objects per run; synchronous={args.synchronous}"
        )

        def stop_the_world(conn: Any) -> int:
            loaded = load(conn, db.sources)
            return len(mark(loaded, loaded.roots(datetime.now(UTC))).kept)

        _, baseline = await timed_write(db, stop_the_world)
        idle = await idle_writes(db, 1.0)

        rows = []
        for rep in range(args.reps):
            await add_garbage(db, store, native, args.garbage, rep)
            await anyio.sleep(0.02)  # past the filesystem clock's tick
            latencies: list[float] = []
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer_loop, db, stop, latencies)
                await anyio.sleep(0.05)
                report = await collector.collect()
                stop.set()
            removed = sum(r.records for r in report.removed.values())
            rows.append(
                (
                    report.pause_seconds,
                    report.lock_seconds,
                    report.mark_seconds,
                    report.total_seconds,
                    max(latencies),
                    len(latencies),
                    removed,
                    report.rescued,
                )
            )
            print(
                f"run {rep + 1}: pause {report.pause_seconds * 1e3:6.2f} ms  "
                f"lock {report.lock_seconds * 1e3:6.2f} ms  "
                f"mark {report.mark_seconds * 1e3:7.1f} ms  "
                f"total {report.total_seconds * 1e3:7.1f} ms  "
                f"slowest write {max(latencies) * 1e3:6.1f} ms ({len(latencies)} writes)  "
                f"removed {removed} records, {report.bytes_removed} bytes; "
                f"{report.rescued} rescued"
            )
        await native.close()
        db.close()

    pauses = [r[0] for r in rows]
    during = [r[4] for r in rows]
    print()
    print(
        f"pause (writers held back): median {ms(statistics.median(pauses))}, max {ms(max(pauses))}"
    )
    print(
        f"every writer-lock hold of a run together: median "
        f"{ms(statistics.median(r[1] for r in rows))}"
    )
    print(f"mark, concurrent with writers: median {ms(statistics.median(r[2] for r in rows))}")
    print(f"load + mark under the lock (what a stop-the-world pause would be): {ms(baseline)}")
    print(
        f"writer latency without gc: median {ms(statistics.median(idle))}, "
        f"max {ms(max(idle))}; slowest write during a collection: max {ms(max(during))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--garbage", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"))
    args = parser.parse_args()
    anyio.run(bench, args)


if __name__ == "__main__":
    main()
