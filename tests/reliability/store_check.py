"""``check_store(daemon)``: is what a (restarted) daemon holds consistent, on disk and in records?

Run after every kill of the crash suite, and reusable by any test holding a
:class:`~tests.fixtures.daemon.Daemon`. It reads the metadata database (read-only,
beside the running daemon: WAL lets it), the backends' files and the kernel's mount
table, and asks the daemon only what it alone knows (its tasks, image checks).

What it checks, each failure becoming one line of :attr:`StoreReport.problems`:

* the metadata database passes SQLite's ``quick_check`` and ``foreign_key_check``;
* every content record names a blob that exists, has the recorded size and hashes to
  its digest; every file under ``blobs/sha256`` is a complete blob (name = hash), so
  no partial blob is ever visible;
* every snapshot record maps to an existing backend snapshot of the same kind whose
  data directory exists, and its parent record exists and is the backend's parent;
* nothing is mounted under the daemon's root or state except the root filesystems of
  the tasks it knows and, for each pod sandbox the CRI (``cri.v1``) has a record of,
  the pod's ``/dev/shm`` and, until the pod is stopped, its network namespace;
* the OCI runtimes hold no container, and no monitor runs, for a task the daemon
  does not know; every running task's process is alive;
* ``moorage images check --platform <host>`` passes in every namespace (when the images
  plugin runs);
* with ``collect=True`` a garbage collection is run first, and afterwards no blob,
  backend snapshot, snapshot directory or ingest is left that nothing refers to.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runtime.core.errors import MoorageError
from tests.fixtures.daemon import Daemon
from tests.fixtures.images import host_platform

__all__ = ["StoreReport", "assert_store_ok", "check_store", "mounts_under", "runtime_containers"]

_HEX = frozenset("0123456789abcdef")
# Snapshotter backends whose bookkeeping lives in <root>/snapshotter.<name>/metadata.db.
_BACKENDS = ("native", "overlayfs")
# How cri.v1 marks a sandbox's record and where it keeps the pod's netns and directory
# (runtime/plugins/cri/records.py: KIND_LABEL, EXTENSION, SandboxRecord).
CRI_KIND_LABEL = "io.moorage.cri.kind"
CRI_EXTENSION = "io.moorage.cri"
# Runtime plugins and the directory (under the state) of their OCI runtime's state.
_RUNTIMES = {"runtime.runc": ("runc", "runc-root"), "runtime.crun": ("crun", "crun-root")}


@dataclass
class StoreReport:
    """What :func:`check_store` looked at and what it found wrong.

    Attributes:
        problems: One line per inconsistency; empty when the store is consistent.
        blobs: Blob files hashed.
        content_records: Content records checked (all namespaces).
        snapshot_records: Snapshot records checked.
        tasks: Tasks the daemon reported.
        images: Images checked for completeness.
    """

    problems: list[str] = field(default_factory=list)
    blobs: int = 0
    content_records: int = 0
    snapshot_records: int = 0
    tasks: int = 0
    images: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def _db(daemon: Daemon) -> sqlite3.Connection:
    # Read-only: the checker must never be what repairs a store.
    conn = sqlite3.connect(f"{daemon.db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


# (path, inode, size, mtime, ctime) -> digest: a blob file never changes in place, so a
# checker run after every kill hashes each blob once, not once per run.
_HASHED: dict[tuple[str, int, int, int, int], str] = {}


def _sha256_file(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _HASHED[key] = f"sha256:{digest.hexdigest()}"
    return _HASHED[key]


def mounts_under(*prefixes: Path) -> list[str]:
    """Mount points at or below any of ``prefixes`` (``/proc/self/mountinfo``), in mount order."""
    wanted = [str(p).rstrip("/") for p in prefixes]
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in wanted):
                found.append(point)
    return found


def runtime_containers(binary: str, root: Path) -> list[str]:
    """Ids of the containers an OCI runtime keeps under ``root`` (``<binary> list``)."""
    if not root.is_dir():
        return []
    listed = subprocess.run(
        [binary, "--root", str(root), "list", "-q"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return listed.stdout.split() if listed.returncode == 0 else []


def _monitors(state: Path) -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of conmon processes started for this daemon's state directory."""
    marker = str(state).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and any(marker in a for a in argv):
            yield int(entry.name), argv


class _Checker:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.report = StoreReport()
        self.content_root = daemon.root / "content.local"

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    # -- metadata ----------------------------------------------------------------------------

    def metadata(self) -> None:
        if not self.daemon.db_path.exists():
            self.problem(f"no metadata database at {self.daemon.db_path}")
            return
        with contextlib.closing(_db(self.daemon)) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                self.problem(f"metadata database quick_check: {result}")
            for row in conn.execute("PRAGMA foreign_key_check").fetchall():
                self.problem(f"metadata foreign key violation: {tuple(row)}")
            self.content(conn)
            self.snapshots(conn)

    def content(self, conn: sqlite3.Connection) -> None:
        blobs = self.content_root / "blobs" / "sha256"
        hashed: dict[str, tuple[str, int]] = {}
        if blobs.is_dir():
            for entry in os.scandir(blobs):
                name = entry.name
                if len(name) != 64 or not set(name) <= _HEX or not entry.is_file(
                        follow_symlinks=False):
                    self.problem(f"stray entry under blobs/sha256: {name}")
                    continue
                st = entry.stat(follow_symlinks=False)
                actual = _sha256_file(Path(entry.path), st)
                self.report.blobs += 1
                hashed[name] = (actual, st.st_size)
                if actual != f"sha256:{name}":
                    self.problem(f"partial or corrupt blob sha256:{name} hashes to {actual}")
        rows = conn.execute("SELECT namespace, digest, size FROM content").fetchall()
        for row in rows:
            self.report.content_records += 1
            digest, size = row["digest"], row["size"]
            hex_ = digest.partition(":")[2]
            if hex_ not in hashed:
                self.problem(f"content record {row['namespace']}/{digest}: no blob on disk")
            elif hashed[hex_][1] != size:
                self.problem(f"content record {row['namespace']}/{digest}: size {size}, "
                             f"blob has {hashed[hex_][1]}")

    def snapshots(self, conn: sqlite3.Connection) -> None:
        backends = {name: self.backend(name) for name in _BACKENDS}
        rows = conn.execute("SELECT * FROM snapshots").fetchall()
        by_key = {(r["namespace"], r["snapshotter"], r["key"]): r for r in rows}
        for row in rows:
            self.report.snapshot_records += 1
            ns, sn, key = row["namespace"], row["snapshotter"], row["key"]
            where = f"snapshot record {ns}/{sn}/{key!r}"
            backend = backends.get(sn)
            if backend is None:
                continue  # a third-party backend: not ours to inspect
            found = backend.get(row["backend_key"])
            if found is None:
                self.problem(f"{where}: backend snapshot {row['backend_key']!r} does not exist")
                continue
            kind, parent_key, data = found
            if kind != row["kind"]:
                self.problem(f"{where}: kind {row['kind']}, backend says {kind}")
            if not data.is_dir():
                self.problem(f"{where}: backend data directory {data} is missing")
            if row["parent"]:
                parent = by_key.get((ns, sn, row["parent"]))
                if parent is None:
                    self.problem(f"{where}: parent {row['parent']!r} has no record")
                elif parent["backend_key"] != parent_key:
                    self.problem(f"{where}: parent's backend key {parent['backend_key']!r}, "
                                 f"backend parent {parent_key!r}")

    def backend(self, name: str) -> dict[str, tuple[str, str, Path]]:
        """``backend key -> (kind, parent key, data dir)`` of one snapshotter backend."""
        root = self.daemon.root / f"snapshotter.{name}"
        db = root / "metadata.db"
        if not db.exists():
            return {}
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        with contextlib.closing(conn):
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='snapshots'").fetchone():
                return {}  # the backend made its schema lazily and was never used
            rows = conn.execute(
                "SELECT s.id, s.key, s.kind, COALESCE(p.key, '') FROM snapshots s "
                "LEFT JOIN snapshots p ON p.id = s.parent_id"
            ).fetchall()
        data = root / "snapshots"
        return {key: (kind, parent, data / str(id_)) for id_, key, kind, parent in rows}

    # -- runtime -------------------------------------------------------------------------------

    def runtime(self) -> None:
        """Mounts, runtime containers, monitors and processes against the daemon's tasks."""
        client = self.daemon.client()
        namespaces = [ns.name for ns in client.namespaces()]
        known: dict[tuple[str, str], str] = {}
        for ns in namespaces:
            for task in self.daemon.client(ns).tasks():
                self.report.tasks += 1
                known[(ns, task.container_id)] = task.runtime
                if task.status == "running" and task.pid and not Path(f"/proc/{task.pid}").exists():
                    self.problem(f"task {ns}/{task.container_id} is running but pid "
                                 f"{task.pid} is gone")
        state = self.daemon.state
        allowed = [state / runtime / ns / cid for (ns, cid), runtime in known.items()]
        pod_mounts = {m for ns in namespaces for m in self.cri_pod_mounts(ns)}
        for point in mounts_under(self.daemon.root, state):
            if point in pod_mounts:
                continue
            if not any(point == str(a) or point.startswith(f"{a}/") for a in allowed):
                self.problem(f"stray mount {point}")
        for runtime, (binary, runtime_root) in _RUNTIMES.items():
            root = state / runtime_root
            if not root.is_dir():
                continue
            for ns_dir in (d for d in root.iterdir() if d.is_dir()):
                for cid in runtime_containers(binary, ns_dir):
                    if (ns_dir.name, cid) not in known:
                        self.problem(f"{binary} still holds container {ns_dir.name}/{cid}, "
                                     "which the daemon does not know")
            bundles = state / runtime
            for ns_dir in (d for d in bundles.glob("*") if d.is_dir()):
                for bundle in (d for d in ns_dir.iterdir() if d.is_dir()):
                    if (ns_dir.name, bundle.name) not in known:
                        self.problem(f"leftover bundle {bundle}")
        for pid, argv in _monitors(state):
            if not any(str(a).encode() in arg for a in allowed for arg in argv):
                self.problem(f"monitor {pid} runs for a task the daemon does not know")

    def cri_pod_mounts(self, namespace: str) -> set[str]:
        """The mounts the CRI's pod sandboxes in ``namespace`` own: netns, /dev/shm, pins.

        Only a sandbox record's own netns bind mount (until StopPodSandbox, which
        removes it before it marks the record stopped) and its ``<dir>/shm`` tmpfs
        count, and only while the record exists: a pod the CRI forgot owns nothing.
        """
        owned: set[str] = set()
        for container in self.daemon.client(namespace).containers():
            if container.labels.get(CRI_KIND_LABEL) != "sandbox":
                continue
            ext = container.extensions.get(CRI_EXTENSION)
            if not isinstance(ext, dict):
                continue
            if ext.get("netns") and not ext.get("stopped"):
                owned.add(str(ext["netns"]))
            if ext.get("dir") and ext.get("shm_mounted"):
                owned.add(str(Path(str(ext["dir"])) / "shm"))
            if ext.get("dir") and ext.get("infra") is False and ext.get("ready") \
                    and not ext.get("stopped"):
                # A pod without infra: its pinned IPC and UTS namespaces (cri/pins.py).
                owned |= {str(Path(str(ext["dir"])) / "ns" / kind) for kind in ("ipc", "uts")}
            options = ext.get("config", {}).get("linux", {}).get("security_context", {}).get(
                "namespace_options", {})
            userns = options.get("userns_options")
            if ext.get("dir") and isinstance(userns, dict) and userns.get("mode", "POD") == "POD" \
                    and not ext.get("stopped"):
                # A pod with a user namespace, with infra or not: it is pinned with the
                # pod's IPC and UTS namespaces (cri/pins.py: pin_with_user_namespace).
                owned |= {str(Path(str(ext["dir"])) / "ns" / kind)
                          for kind in ("user", "ipc", "uts")}
        return owned

    def images(self) -> None:
        """``moorage images check`` in every namespace, when the images plugin runs."""
        client = self.daemon.client()
        running = {f"{p.type}.{p.id}" for p in client.plugins() if p.status == "ok"}
        if "images.store" not in running:
            return  # the images plugin is optional: nothing to check without it
        from runtime.cli.main import main

        for ns in [n.name for n in client.namespaces()]:
            names = [image.name for image in self.daemon.client(ns).images()]
            if not names:
                continue
            self.report.images += len(names)
            out = io.StringIO()
            # The host's platform: what a pull fetches unless told to fetch them all.
            platform = "/".join(host_platform())
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(["--address", self.daemon.address, "-n", ns, "images", "check",
                             "--platform", platform])
            if code != 0:
                self.problem(f"moorage -n {ns} images check failed:\n{out.getvalue()}")

    # -- after a collection --------------------------------------------------------------------

    def garbage(self) -> None:
        """After a collection nothing unreferenced is left on disk."""
        with contextlib.closing(_db(self.daemon)) as conn:
            referenced = {r[0] for r in conn.execute(
                "SELECT digest FROM content UNION SELECT expected FROM ingests")}
            backend_keys = {(r[0], r[1]) for r in conn.execute(
                "SELECT snapshotter, backend_key FROM snapshots")}
            ingest_refs = {r[0] for r in conn.execute("SELECT backend_ref FROM ingests")}
        blobs = self.content_root / "blobs" / "sha256"
        if blobs.is_dir():
            for name in os.listdir(blobs):
                if f"sha256:{name}" not in referenced:
                    self.problem(f"blob sha256:{name} has no record after a collection")
        ingests = self.content_root / "ingest"
        if ingests.is_dir():
            for entry in ingests.iterdir():
                ref = (entry / "ref").read_text() if (entry / "ref").exists() else None
                if ref not in ingest_refs:
                    self.problem(f"ingest {entry.name} ({ref!r}) has no record after a collection")
        for name in _BACKENDS:
            backend = self.backend(name)
            for key in backend:
                if (name, key) not in backend_keys:
                    self.problem(f"backend snapshot {name}/{key!r} has no record after a "
                                 "collection")
            ids = {str(data.name) for _, _, data in backend.values()}
            snapshots = self.daemon.root / f"snapshotter.{name}" / "snapshots"
            if snapshots.is_dir():
                for entry in snapshots.iterdir():
                    if entry.name not in ids:
                        self.problem(f"stray snapshot directory {entry} after a collection")


def check_store(daemon: Daemon, *, collect: bool = False) -> StoreReport:
    """Check a running daemon's store; return what was checked and what is wrong.

    Args:
        daemon: A running daemon (restarted after a crash, typically).
        collect: Run a garbage collection first and also require that it left nothing
            unreferenced behind (blobs, ingests, backend snapshots, directories).
    """
    checker = _Checker(daemon)
    try:
        daemon.client().healthz()
    except MoorageError as exc:
        checker.problem(f"daemon does not answer: {exc}")
        return checker.report
    if collect:
        daemon.client().gc()
    checker.metadata()
    checker.runtime()
    checker.images()
    if collect:
        checker.garbage()
    return checker.report


def assert_store_ok(daemon: Daemon, *, collect: bool = False, context: str = "") -> StoreReport:
    """:func:`check_store`, failing the test with every problem (and the daemon log's tail)."""
    report = check_store(daemon, collect=collect)
    if report.problems:
        # Errors and warnings only: the info lines of every restart drown them otherwise.
        noisy = ("level=info", "level=debug")
        lines = [line[:400] for line in daemon.log().splitlines() if not line.startswith(noisy)]
        tail = "\n".join(lines[-15:])
        raise AssertionError(
            f"store inconsistent{f' after {context}' if context else ''}:\n  "
            + "\n  ".join(report.problems)
            + f"\n--- daemon log (tail) ---\n{tail}"
        )
    return report
