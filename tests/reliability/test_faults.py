"""Injected faults: a misbehaving registry, a full disk, a broken runtime, a lost monitor, a
stalled proxy plugin.

Each test asks the same three things: the caller gets a clear error of the right kind
within a bounded time, nothing half-done is committed (:func:`check_store` passes), and
the daemon keeps serving (the same operation works once the fault is gone).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import signal
import socketserver
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from runtime.api.specs import SpecOptions
from runtime.api.types import ContentInfo, ImageProgress, ProgressBlob, ProgressDone
from runtime.client import Client
from runtime.core.errors import MoorageError, NotFound, ResourceExhausted
from runtime.plugins.snapshots.api import Mount
from tests.fixtures.daemon import Daemon, assert_error
from tests.fixtures.images import MEDIA_TYPE_LAYER_GZIP, Descriptor, Layer, LayerBuilder
from tests.fixtures.system import require_binary, require_root
from tests.reliability.blobs import Member, MemoryImage, memory_image, raw_layer, sha256
from tests.reliability.fake_registry import FakeRegistry, Fault
from tests.reliability.store_check import assert_store_ok, mounts_under

pytestmark = pytest.mark.root

#: Collections only when asked.
QUIET = """
[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000
"""
#: Pulls give up on a silent registry after 2 s, and try a failing one again (the default
#: four attempts) after 0.05 to 0.2 s rather than 0.5 to 2 s: these specs assert the error
#: and the store, not the backoff (tests/reliability/test_bounded_retries.py does that).
REGISTRY_CONFIG = QUIET + """
[plugins."images.store"]
read_timeout = 2.0
connect_timeout = 2.0

[plugins."images.store".retry]
backoff = 0.05
max_backoff = 0.2
"""


def _pull(client: Client, ref: str) -> None:
    for _ in client.pull(ref, plain_http=True):
        pass


def _unique_image(tag: str, size: int = 200_000) -> MemoryImage:
    data = os.urandom(size)  # incompressible: the blob is as big as the file
    return memory_image([LayerBuilder().dir("/data").file(f"/data/{tag}", data)])


# -- a misbehaving registry -------------------------------------------------------------


@pytest.fixture(scope="module")
def pull_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon for the registry faults (shared: each test uses its own image)."""
    require_root()
    with Daemon(tmp_path_factory.mktemp("faults") / "d", REGISTRY_CONFIG) as daemon:
        yield daemon


_FAULTS = [
    # (fault, error code, what the message must say)
    (Fault.DROP, "unavailable", "cut short"),
    (Fault.STALL, "unavailable", "no data for 2"),
    (Fault.CORRUPT, "failed_precondition", "digest"),
    (Fault.SHORT_LENGTH, "unavailable", "ended at byte"),
    (Fault.LONG_LENGTH, "failed_precondition", "more than the expected"),
]


@pytest.mark.parametrize(("fault", "code", "says"), _FAULTS, ids=[f.value for f, _, _ in _FAULTS])
def test_registry_fault_fails_the_pull_cleanly(
    pull_daemon: Daemon, fake_registry: FakeRegistry, fault: Fault, code: str, says: str
) -> None:
    """A clear error, no record of the bad blob or of the image, and the next pull works."""
    image = _unique_image(fault.value)
    ref = fake_registry.add(f"faults/{fault.value}", image)
    layer = image.layers[0].digest
    fake_registry.fault(layer, fault)
    api = pull_daemon.client("faults")
    started = time.monotonic()
    with pytest.raises(MoorageError) as caught:
        _pull(api, ref)
    elapsed = time.monotonic() - started
    message = assert_error(caught.value, code)
    assert says in message, message
    assert layer in message or fake_registry.host in message, message
    # Stalls are given up after read_timeout (2 s) per attempt, a few resumes at most.
    assert elapsed < 30, elapsed
    with pytest.raises(NotFound):
        api.content_info(layer)
    with pytest.raises(NotFound):
        api.image(ref)
    assert_store_ok(pull_daemon, context=f"a pull failed by {fault.value}")
    fake_registry.clear_faults()
    _pull(api, ref)
    assert api.check_image(ref).complete


def test_dropped_connection_is_resumed_where_it_broke(
    pull_daemon: Daemon, fake_registry: FakeRegistry
) -> None:
    """One cut is no error: the download resumes with a Range request."""
    image = _unique_image("resume")
    ref = fake_registry.add("faults/resume", image)
    layer = image.layers[0].digest
    fake_registry.fault(layer, Fault.DROP, times=1)
    _pull(pull_daemon.client("faults"), ref)
    assert fake_registry.requests[("blob", layer)] == 2
    assert_store_ok(pull_daemon, context="a resumed download")


def _same_length_layers(size: int, seed: int) -> tuple[Layer, Layer]:
    """Two valid gzip layers of equal length but different bytes (one served for the other).

    Stored deflate blocks (level 0): the blob's length depends on the tar's length only.
    Each test takes its own ``seed``: a blob stored by another test is not downloaded.
    """

    def layer(seed: int) -> Layer:
        data = random.Random(seed).randbytes(size)
        tar = raw_layer([Member("data", tarfile.DIRTYPE), Member("data/blob", data=data)],
                        compress=False)
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=0) as gz:
            gz.write(tar.data)
        blob = out.getvalue()
        return Layer(Descriptor(MEDIA_TYPE_LAYER_GZIP, sha256(blob), len(blob)), tar.diff_id, blob)

    good, other = layer(seed), layer(seed + 1)
    assert good.descriptor.size == other.descriptor.size
    return good, other


def _pull_events(client: Client, ref: str, events: list[ImageProgress]) -> None:
    for event in client.pull(ref, plain_http=True):
        events.append(event)


def _applied_while_downloading(events: list[ImageProgress], digest: str) -> bool:
    return any(
        isinstance(e, ProgressBlob) and e.digest == digest and e.status == "downloading"
        and e.unpack == "applying"
        for e in events
    )


def test_layer_applied_while_it_downloads(pull_daemon: Daemon, fake_registry: FakeRegistry) -> None:
    """A slow download is applied as it arrives; the image is the same as ever."""
    layer, _ = _same_length_layers(3 << 20, seed=1)
    image = memory_image([layer])
    ref = fake_registry.add("faults/streamed-ok", image)
    fake_registry.rate = 4 << 20  # about 0.8 s for the layer
    events: list[ImageProgress] = []
    try:
        _pull_events(pull_daemon.client("streamed-ok"), ref, events)
    finally:
        fake_registry.clear_faults()
    assert _applied_while_downloading(events, layer.descriptor.digest)
    [done] = [e for e in events if isinstance(e, ProgressDone)]
    assert done.timings.get("unpack.streamed", 0) > 0
    api = pull_daemon.client("streamed-ok")
    assert api.check_image(ref).complete
    assert api.content_info(layer.descriptor.digest).labels["containerd.io/uncompressed"] == (
        layer.diff_id
    )
    assert_store_ok(pull_daemon, context="a layer applied while it downloaded")


def test_streamed_layer_with_a_wrong_digest_leaves_no_blob_and_no_snapshot(
    pull_daemon: Daemon, fake_registry: FakeRegistry
) -> None:
    """Other bytes of the right length, a valid layer of their own, are applied as they
    arrive; the digest check at the end fails the pull, and nothing of them is kept."""
    good, other = _same_length_layers(3 << 20, seed=3)
    ref = fake_registry.add("faults/streamed-bad", memory_image([good]))
    fake_registry.substitute(good.descriptor.digest, other.data)
    fake_registry.rate = 4 << 20
    api = pull_daemon.client("streamed-bad")
    events: list[ImageProgress] = []
    try:
        with pytest.raises(MoorageError) as caught:
            _pull_events(api, ref, events)
    finally:
        fake_registry.clear_faults()
    message = assert_error(caught.value, "failed_precondition")
    assert "digest" in message, message
    assert _applied_while_downloading(events, good.descriptor.digest)
    with pytest.raises(NotFound):
        api.content_info(good.descriptor.digest)
    with pytest.raises(NotFound):
        api.image(ref)
    assert api.snapshots("overlayfs") == []
    assert api.ingests() == []
    assert_store_ok(pull_daemon, context="a streamed layer with a wrong digest")
    _pull(api, ref)
    assert api.check_image(ref).complete


# -- a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 64 MiB tmpfs for the daemon's root (and config and log)."""
    require_root()
    path = Path(tempfile.mkdtemp(prefix="mofull"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


def test_full_disk_ingest_is_resource_exhausted_and_nothing_half_committed(
    small_disk: Path,
) -> None:
    """An upload bigger than the disk: 507, no record, the daemon serves and recovers space."""
    with Daemon(small_disk, QUIET) as daemon:
        api = daemon.client()
        with pytest.raises(ResourceExhausted) as caught:
            api.write_content("too-big", _chunks(96 << 20), commit=True)
        message = assert_error(caught.value, "resource_exhausted")
        assert "No space left on device" in message, message
        assert api.content() == []
        # The partial upload is an ordinary, resumable ingest: abort frees the space.
        with contextlib.suppress(NotFound):
            api.abort_ingest("too-big")
        assert api.ingests() == []
        small = api.write_content("small", b"fits" * 1000, commit=True)
        assert isinstance(small, ContentInfo)
        assert api.content_info(small.digest).size == 4000
        assert_store_ok(daemon, context="a full disk")


def test_full_disk_during_unpack_is_resource_exhausted(
    small_disk: Path, fake_registry: FakeRegistry
) -> None:
    """A layer that unpacks bigger than the disk fails the pull with 507 and commits nothing."""
    # 96 MiB of zeros gzip to about 100 KiB: the blob fits, its files do not.
    layer = raw_layer([Member("big", data=bytes(96 << 20))])
    image = memory_image([layer])
    ref = fake_registry.add("faults/fills-disk", image)
    with Daemon(small_disk, QUIET) as daemon:
        api = daemon.client()
        with pytest.raises(ResourceExhausted) as caught:
            _pull(api, ref)
        message = assert_error(caught.value, "resource_exhausted")
        # Whoever hits the full disk first says so: the layer's files or the database.
        assert "No space left on device" in message or "disk is full" in message, message
        with pytest.raises(NotFound):
            api.image(ref)
        assert [s for s in api.snapshots("overlayfs") if s.kind == "committed"] == []
        assert_store_ok(daemon, collect=True, context="a full disk during unpack")
        assert api.write_content("after", b"still serving", commit=True)


# -- a broken runtime ---------------------------------------------------------------------


def _runtime_daemon(tmp_path: Path, script: str, timeout: float = 2.0) -> Daemon:
    binary = tmp_path / "broken-runtime"
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(0o755)
    config = QUIET + f'[plugins."runtime.runc"]\nbinary = "{binary}"\ntimeout = {timeout}\n'
    return Daemon(tmp_path / "d", config)


def _processes_running(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (this test's own scripts)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _rootfs_mount(rootfs: Path) -> list[Mount]:
    return [Mount(type="bind", source=str(rootfs), options=["rbind", "rw"])]


def test_runtime_that_fails_gives_its_message(tmp_path: Path, busybox_rootfs: Path) -> None:
    """A runtime that exits 3 with a message: a 4xx error carrying it, nothing left behind."""
    script = 'echo "broken-runtime: refusing $*" >&2\nexit 3\n'
    with _runtime_daemon(tmp_path, script) as daemon:
        api = daemon.client()
        api.create_container("c1", spec_options=SpecOptions(args=["true"]))
        started = time.monotonic()
        with pytest.raises(MoorageError) as caught:
            api.create_task("c1", rootfs=_rootfs_mount(busybox_rootfs))
        assert 400 <= caught.value.http_status < 500, caught.value
        assert "refusing" in caught.value.message or "status 3" in caught.value.message, (
            caught.value.message)
        assert time.monotonic() - started < 10
        with pytest.raises(NotFound):
            api.task("c1")
        assert_store_ok(daemon, context="a failing runtime")
        api.delete_container("c1")


def test_runtime_that_hangs_is_cut_at_the_timeout(tmp_path: Path, busybox_rootfs: Path) -> None:
    """A runtime that never answers: deadline_exceeded within a few timeouts, no process left."""
    marker = tmp_path / "broken-runtime"
    with _runtime_daemon(tmp_path, "exec sleep 1000\n", timeout=2.0) as daemon:
        api = daemon.client()
        api.create_container("c1", spec_options=SpecOptions(args=["true"]))
        started = time.monotonic()
        with pytest.raises(MoorageError) as caught:
            api.create_task("c1", rootfs=_rootfs_mount(busybox_rootfs))
        elapsed = time.monotonic() - started
        assert caught.value.code == "deadline_exceeded", caught.value
        assert elapsed < 4 * 2.0 + 2, elapsed
        assert daemon.client().healthz().status == "ok"
        with pytest.raises(NotFound):
            api.task("c1")
        deadline = time.monotonic() + 10
        while _processes_running(str(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftover = _processes_running(str(marker))
        for pid in leftover:  # ours: started by this test's daemon
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert leftover == [], "the hung runtime was not killed"
        assert mounts_under(daemon.state) == []


# -- a lost monitor -----------------------------------------------------------------------


def test_killed_monitor_reports_exit_255(tmp_path: Path, busybox_rootfs: Path) -> None:
    """SIGKILL to a task's conmon: the task exits with 255, its process is killed, no leftovers."""
    require_binary("conmon")
    with Daemon(tmp_path / "d", QUIET + '[plugins."runtime.runc"]\n'
                'exit_publish_grace = 0.5\n') as daemon:
        api = daemon.client()
        api.create_container("c1", spec_options=SpecOptions(args=["sleep", "1000"]))
        api.create_task("c1", rootfs=_rootfs_mount(busybox_rootfs))
        api.start_task("c1")
        pid = api.task("c1").pid
        bundle = str(daemon.state / "runtime.runc" / "default" / "c1")
        monitors = [p for p in _processes_running(bundle)
                    if Path(f"/proc/{p}/exe").resolve().name == "conmon"]
        assert len(monitors) == 1, monitors
        os.kill(monitors[0], signal.SIGKILL)
        assert api.wait_task("c1", timeout=30).exit_status == 255
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the unsupervised process still runs"
        api.delete_task("c1")
        api.delete_container("c1")
        assert_store_ok(daemon, context="a killed monitor")


# -- a stalled proxy plugin ---------------------------------------------------------------


class _Stalling(BaseHTTPRequestHandler):
    """Answers the health probe; every plugin call hangs until the proxy is closed."""

    server: StalledProxy

    def do_GET(self) -> None:
        body = json.dumps({"protocol": 1, "types": ["snapshotter"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.release.wait(60)

    def log_message(self, format: str, *args: object) -> None:
        pass


class StalledProxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A snapshotter proxy, in threads of the test, whose calls never answer."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), _Stalling)
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Release the stalled calls and stop."""
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join()


def test_stalled_proxy_plugin_cannot_freeze_the_daemon(tmp_path: Path) -> None:
    """Calls into it fail after its timeout; GC and the API go on; SIGTERM stops in time."""
    directory = Path(tempfile.mkdtemp(prefix="mostall"))
    sock = directory / "p.sock"
    proxy = StalledProxy(sock)
    extra = QUIET + f'[proxy_plugins.stalled]\ntype = "snapshotter"\naddress = "unix://{sock}"\n' \
        "timeout = 1.0\n"
    try:
        daemon = Daemon(tmp_path / "d", extra).start()
        try:
            api = daemon.client()
            api.write_content("garbage", b"collect me", commit=True)
            with ThreadPoolExecutor(2) as pool:
                started = time.monotonic()
                calls: list[Future[Any]] = [pool.submit(api.prepare_snapshot, "stalled", "k"),
                                            pool.submit(api.gc)]
                slowest = 0.0
                while not all(c.done() for c in calls):
                    before = time.monotonic()
                    assert daemon.client().healthz().status == "ok"
                    slowest = max(slowest, time.monotonic() - before)
                    time.sleep(0.05)
                with pytest.raises(MoorageError) as caught:
                    calls[0].result()
                assert assert_error(caught.value, "unavailable").startswith("proxy stalled")
                report = calls[1].result()  # the collection skips the stalled backend
                assert report.removed["content"].records == 1
                assert time.monotonic() - started < 10
                assert slowest < 1.0, slowest
            stopping = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - stopping < 15
        finally:
            daemon.close()
    finally:
        proxy.close()
        sock.unlink(missing_ok=True)
        directory.rmdir()
