"""Specification of the content and lease API, through a real daemon and the sync client.

Each test runs against its own ``moorage daemon`` subprocess (the ``daemon`` fixture), so
what is checked is what a client sees: HTTP status and error code, exact messages, events,
and the bytes under ``<root>/content.local``.

The daemon runs its garbage collector, which, as containerd's, takes blobs no lease (or
image) holds at its next run: at start-up and after any deletion. Tests that keep a blob
around therefore write it under a lease, as real clients do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runtime.api.types import ContentInfo, EventEnvelope, IngestStatus
from runtime.client import Client
from runtime.client.transport import request
from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
    OutOfRange,
    Unavailable,
)
from tests.fixtures.daemon import Daemon, assert_error

MIB = 1 << 20
EXPIRE_LABEL = "containerd.io/gc.expire"
INVALID_NAME = "is invalid: use letters and digits joined by single '.', '_' or '-'"


# -- helpers -----------------------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def blob_dir(daemon: Daemon) -> Path:
    return daemon.root / "content.local" / "blobs" / "sha256"


def ingest_dir(daemon: Daemon) -> Path:
    return daemon.root / "content.local" / "ingest"


def blob_files(daemon: Daemon) -> list[str]:
    return sorted(os.listdir(blob_dir(daemon)))


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(NotFound):
            value = predicate()
            if value:
                return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def hold(client: Client, lease: str = "hold") -> str:
    """Create a lease that keeps what is written under it from garbage collection."""
    return client.create_lease(lease).id


def offset_of(client: Client, ref: str) -> int:
    return int(client.ingest_status(ref).offset)


class Upload(threading.Thread):
    """``client.write_content(ref, source, **kw)`` in a thread; keeps the result or error."""

    def __init__(self, client: Client, ref: str, source: Any, **kw: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.ref, self.source, self.kw = client, ref, source, kw
        self.result: IngestStatus | ContentInfo | None = None
        self.error: MoorageError | None = None

    def run(self) -> None:
        try:
            self.result = self.client.write_content(self.ref, self.source, **self.kw)
        except MoorageError as exc:
            self.error = exc

    def outcome(self, timeout: float = 60.0) -> IngestStatus | ContentInfo | MoorageError:
        self.join(timeout)
        assert not self.is_alive(), f"upload of {self.ref} still running"
        return self.error if self.error is not None else self.result  # type: ignore[return-value]


def gated(chunks: list[bytes], gate: threading.Event, after: int = 1) -> Iterator[bytes]:
    """Yield ``after`` chunks, wait for ``gate``, then yield the rest."""
    for i, chunk in enumerate(chunks):
        if i == after:
            assert gate.wait(30), "gate never opened"
        yield chunk


class Events(threading.Thread):
    """Collects ``client.events()`` into a queue until the daemon ends the stream."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.queue: queue.Queue[EventEnvelope] = queue.Queue()

    def run(self) -> None:
        with contextlib.suppress(MoorageError, OSError):
            for envelope in self.client.events():
                self.queue.put(envelope)

    def sync(self) -> None:
        """Return once the subscription is live (it cannot be observed directly)."""
        for i in range(300):
            self.client.create_lease(f"sync-{i}")
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.1)
                break
        else:
            raise AssertionError("the event subscription never delivered")
        time.sleep(0.2)
        while not self.queue.empty():
            self.queue.get_nowait()

    def take(self, n: int) -> list[EventEnvelope]:
        return [self.queue.get(timeout=10) for _ in range(n)]


# -- resumable ingest across a daemon crash -------------------------------------------------------

BIG_CHUNKS = 300
BIG_TOTAL = BIG_CHUNKS * MIB


def big_chunk(i: int) -> bytes:
    return random.Random(i).randbytes(MIB)


def big_from(offset: int) -> Iterator[bytes]:
    first, skip = divmod(offset, MIB)
    for i in range(first, BIG_CHUNKS):
        chunk = big_chunk(i)
        yield chunk[skip:] if i == first else chunk


class BlobWatcher(threading.Thread):
    """Polls the blob directory; records every file that is not a complete, correct blob."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(daemon=True)
        self.path, self.size = path, size
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.bad: list[str] = []

    def check(self, name: str) -> None:
        path = self.path / name
        size = path.stat().st_size
        if size != self.size:
            self.bad.append(f"{name}: {size} bytes")
            return
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(8 * MIB):
                h.update(block)
        if h.hexdigest() != name:
            self.bad.append(f"{name}: content hashes to {h.hexdigest()}")

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.path):
                    if name not in self.seen:
                        self.seen.add(name)
                        self.check(name)
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.join(30)


def test_ingest_resumes_after_daemon_sigkill(daemon: Daemon) -> None:
    """SIGKILL mid-upload keeps the ingest: resume at its offset, commit, right digest.

    A watcher polls ``blobs/sha256`` throughout (upload, crash, restart, resume, commit):
    a file there must always be a complete blob whose content matches its name.
    """
    h = hashlib.sha256()
    for i in range(BIG_CHUNKS):
        h.update(big_chunk(i))
    digest = f"sha256:{h.hexdigest()}"
    client = daemon.client()
    lease = hold(client)
    watcher = BlobWatcher(blob_dir(daemon), BIG_TOTAL)
    watcher.start()
    killed = threading.Event()
    sent = 0

    def slow_source() -> Iterator[bytes]:
        nonlocal sent
        for i, chunk in enumerate(big_from(0)):
            if i == BIG_CHUNKS // 2:
                assert killed.wait(30)  # never let the upload finish before the crash
            time.sleep(0.002)
            sent += len(chunk)
            yield chunk

    try:
        upload = Upload(
            client,
            "layer-big",
            slow_source(),
            total=BIG_TOTAL,
            expected=digest,
            commit=True,
            lease=lease,
        )
        upload.start()
        wait_until(lambda: offset_of(client, "layer-big") >= 64 * MIB, what="64 MiB received")
        assert daemon.kill() == -9
        sent_at_kill = sent
        killed.set()
        error = upload.outcome()
        assert isinstance(error, Unavailable), error

        daemon.start()
        status = client.ingest_status("layer-big")
        assert 0 < status.offset <= sent_at_kill < BIG_TOTAL
        assert (status.total, status.expected) == (BIG_TOTAL, digest)
        assert [s.ref for s in client.ingests()] == ["layer-big"]
        assert blob_files(daemon) == []
        # The bytes kept are the ones sent, up to the offset.
        [data] = ingest_dir(daemon).glob("*/data")
        assert data.stat().st_size == status.offset
        with data.open("rb") as kept:
            for i, chunk in enumerate(big_from(0)):
                want = chunk[: status.offset - i * MIB]
                assert kept.read(len(want)) == want, f"chunk {i} differs"
                if (i + 1) * MIB >= status.offset:
                    break

        info = client.write_content(
            "layer-big",
            big_from(status.offset),
            offset=status.offset,
            total=BIG_TOTAL,
            expected=digest,
            commit=True,
            lease=lease,
        )
        assert isinstance(info, ContentInfo)
        assert (info.digest, info.size) == (digest, BIG_TOTAL)
        assert client.ingests() == []
        read_back = hashlib.sha256()
        for chunk in client.read_content(digest):
            read_back.update(chunk)
        assert f"sha256:{read_back.hexdigest()}" == digest
    finally:
        killed.set()
        watcher.finish()
    assert watcher.bad == []
    assert watcher.seen == {digest.removeprefix("sha256:")}
    assert blob_files(daemon) == [digest.removeprefix("sha256:")]
    assert list(ingest_dir(daemon).iterdir()) == []


# -- commit verification --------------------------------------------------------------------------


def test_commit_with_wrong_digest_is_failed_precondition_and_commits_nothing(
    daemon: Daemon,
) -> None:
    client = daemon.client()
    data, wrong = b"hello moorage", digest_of(b"something else")
    with pytest.raises(FailedPrecondition) as exc:
        client.write_content("r", data, expected=wrong, commit=True)
    assert assert_error(exc.value, "failed_precondition") == (
        f"unexpected commit digest {digest_of(data)}, expected {wrong}"
    )
    assert client.content() == []
    assert blob_files(daemon) == []
    with pytest.raises(NotFound):
        client.content_info(digest_of(data))
    # The ingest stays, for the client to abort (or to restart at offset 0).
    assert client.ingest_status("r").offset == len(data)
    client.abort_ingest("r")
    assert client.ingests() == []


def test_commit_with_wrong_size_is_failed_precondition_and_commits_nothing(
    daemon: Daemon,
) -> None:
    client = daemon.client()
    data = b"hello moorage"
    with pytest.raises(FailedPrecondition) as exc:
        client.write_content("r1", data, total=len(data) + 1, commit=True)
    assert assert_error(exc.value, "failed_precondition") == (
        f"unexpected commit size {len(data)}, expected {len(data) + 1}"
    )
    # The separate commit call verifies the same way.
    client.write_content("r2", data)
    with pytest.raises(FailedPrecondition) as exc:
        client.commit_content("r2", size=len(data) - 1, expected=digest_of(data))
    assert exc.value.message == f"unexpected commit size {len(data)}, expected {len(data) - 1}"
    assert client.content() == []
    assert blob_files(daemon) == []
    assert [(s.ref, s.offset) for s in client.ingests()] == [("r1", 13), ("r2", 13)]


def test_commit_after_separate_writes_publishes_the_blob(daemon: Daemon) -> None:
    client = daemon.client()
    lease = hold(client)
    status = client.write_content("r", b"hello ", total=11, lease=lease)
    assert isinstance(status, IngestStatus)
    assert (status.ref, status.offset, status.total) == ("r", 6, 11)
    client.write_content("r", b"world", offset=6)
    info = client.commit_content(
        "r", expected=digest_of(b"hello world"), labels={"k": "v"}, lease=lease
    )
    assert [(r.type, r.id) for r in client.lease_resources(lease)] == [("content", info.digest)]
    assert (info.digest, info.size, info.labels) == (digest_of(b"hello world"), 11, {"k": "v"})
    assert b"".join(client.read_content(info.digest)) == b"hello world"
    assert blob_files(daemon) == [info.digest.removeprefix("sha256:")]


def test_write_at_an_offset_other_than_the_current_one_is_out_of_range(daemon: Daemon) -> None:
    client = daemon.client()
    client.write_content("r", b"abc")
    with pytest.raises(OutOfRange) as exc:
        client.write_content("r", b"def", offset=5)
    assert exc.value.message == "ref r: write at offset 5, current offset is 3"
    # Offset 0 restarts the ingest.
    status = client.write_content("r", b"xy", offset=0)
    assert isinstance(status, IngestStatus) and status.offset == 2


# -- namespaces ----------------------------------------------------------------------------------


def test_namespace_cannot_see_read_label_or_delete_another_namespaces_blobs(
    daemon: Daemon,
) -> None:
    a, b = daemon.client("team-a"), daemon.client("team-b")
    data = b"only for a"
    digest = digest_of(data)
    a.write_content("r", data, commit=True, labels={"owner": "a"}, lease=hold(a))
    missing = f"content {digest} not found"
    calls: list[Callable[[], Any]] = [
        lambda: b.content_info(digest),
        lambda: b"".join(b.read_content(digest)),
        lambda: b.read_content(digest, 1, 2).__next__(),
        lambda: b.label_content(digest, {"owner": "b"}),
        lambda: b.delete_content(digest),
    ]
    for call in calls:
        with pytest.raises(NotFound) as exc:
            call()
        assert assert_error(exc.value, "not_found") == missing
    assert b.content() == []
    assert a.content_info(digest).labels == {"owner": "a"}
    assert b"".join(a.read_content(digest)) == data


def test_namespace_cannot_see_or_touch_another_namespaces_ingests(daemon: Daemon) -> None:
    a, b = daemon.client("team-a"), daemon.client("team-b")
    a.write_content("shared-ref", b"abc")
    assert b.ingests() == []
    for call in (
        lambda: b.ingest_status("shared-ref"),
        lambda: b.abort_ingest("shared-ref"),
        lambda: b.commit_content("shared-ref"),
    ):
        with pytest.raises(NotFound):
            call()
    # The same ref in B is another ingest: no lock conflict, separate offsets.
    b.write_content("shared-ref", b"wxyz")
    assert a.ingest_status("shared-ref").offset == 3
    assert b.ingest_status("shared-ref").offset == 4
    assert a.commit_content("shared-ref").digest == digest_of(b"abc")
    assert b.commit_content("shared-ref").digest == digest_of(b"wxyz")


def test_namespace_cannot_see_or_touch_another_namespaces_leases(daemon: Daemon) -> None:
    a, b = daemon.client("team-a"), daemon.client("team-b")
    a.create_lease("la", {"owner": "a"})
    digest = a.write_content("r", b"leased", commit=True, lease="la").digest  # type: ignore[union-attr]
    assert b.leases() == []
    missing = "lease 'la' not found"
    calls: list[Callable[[], Any]] = [
        lambda: b.lease_resources("la"),
        lambda: b.add_lease_resource("la", "content", digest),
        lambda: b.delete_lease("la"),
        lambda: b.write_content("rb", b"x", lease="la"),
    ]
    for call in calls:
        with pytest.raises(NotFound) as exc:
            call()
        assert assert_error(exc.value, "not_found") == missing
    # The failed write left no ingest behind, in B or on disk.
    assert b.ingests() == []
    assert len(list(ingest_dir(daemon).iterdir())) == 0
    assert [x.id for x in a.leases()] == ["la"]
    assert [(r.type, r.id) for r in a.lease_resources("la")] == [("content", digest)]
    # Lease ids are per namespace: B may use the same one.
    assert b.create_lease("la").id == "la"


def test_blob_shared_by_namespaces_is_stored_once_and_removed_after_all_delete_it(
    daemon: Daemon,
) -> None:
    a, b, c = daemon.client("team-a"), daemon.client("team-b"), daemon.client("team-c")
    data = os.urandom(3 * MIB + 17)
    digest = digest_of(data)
    name = digest.removeprefix("sha256:")
    for client in (a, b, c):
        hold(client)
    info = a.write_content("ra", data, commit=True, lease="hold")
    assert isinstance(info, ContentInfo) and info.digest == digest
    # B uploads the same bytes again: verified, then deduplicated.
    info = b.write_content("rb", data, commit=True, labels={"who": "b"}, lease="hold")
    assert isinstance(info, ContentInfo) and info.labels == {"who": "b"}
    # C announces the digest: nothing to upload, C gains the blob, AlreadyExists says so.
    with pytest.raises(AlreadyExists) as exc:
        c.write_content("rc", data, expected=digest, commit=True, lease="hold")
    assert exc.value.message == f"content {digest} already exists"
    assert c.content_info(digest).size == len(data)
    assert blob_files(daemon) == [name]
    assert list(ingest_dir(daemon).iterdir()) == []

    a.delete_content(digest)
    assert blob_files(daemon) == [name]
    with pytest.raises(NotFound):
        a.content_info(digest)
    assert b"".join(b.read_content(digest)) == data
    b.delete_content(digest)
    assert blob_files(daemon) == [name]
    c.delete_content(digest)
    assert blob_files(daemon) == []
    with pytest.raises(NotFound):
        c.delete_content(digest)


def test_blob_shared_by_namespaces_survives_concurrent_commits_and_deletes(
    daemon: Daemon,
) -> None:
    """Namespaces committing and deleting one digest at once never lose each other's blob.

    A commit puts the bytes in place and records them a moment later; a delete in
    another namespace must not remove the (then unreferenced) blob in between, which
    would fail the commit or leave a record whose bytes are gone.
    """
    data = os.urandom(64 * 1024)
    digest = digest_of(data)
    problems: list[str] = []

    def rounds(namespace: str) -> None:
        client = daemon.client(namespace)
        try:
            hold(client)
            for i in range(40):
                client.write_content(f"r{i}", data, commit=True, lease="hold")
                if b"".join(client.read_content(digest)) != data:
                    problems.append(f"{namespace} round {i}: wrong bytes")
                client.delete_content(digest)
        except (MoorageError, OSError) as exc:
            problems.append(f"{namespace}: {exc!r}")

    threads = [threading.Thread(target=rounds, args=(ns,)) for ns in ("ns-a", "ns-b", "ns-c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert problems == []
    assert blob_files(daemon) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad name", f"namespace 'bad name' {INVALID_NAME}"),
        ("a..b", f"namespace 'a..b' {INVALID_NAME}"),
        ("-lead", f"namespace '-lead' {INVALID_NAME}"),
        ("trail.", f"namespace 'trail.' {INVALID_NAME}"),
        ("a/b", f"namespace 'a/b' {INVALID_NAME}"),
        ("x" * 77, f"namespace {'x' * 77!r}... is longer than 76 characters"),
        ("version", "namespace 'version' is reserved"),
    ],
)
def test_bad_namespace_name_is_invalid_argument(daemon: Daemon, name: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        daemon.client(name).content()
    assert assert_error(exc.value, "invalid_argument") == f"header Moorage-Namespace: {reason}"
    with pytest.raises(InvalidArgument) as exc:
        daemon.client().create_namespace(name)
    assert exc.value.message == reason
    assert [ns.name for ns in daemon.client().namespaces()] == []


def test_namespace_names_follow_the_identifier_rule(daemon: Daemon) -> None:
    client = daemon.client()
    # A trailing newline is not part of a valid name.
    with pytest.raises(InvalidArgument) as exc:
        client.create_namespace("abc\n")
    assert exc.value.message == f"namespace 'abc\\n' {INVALID_NAME}"
    assert client.create_namespace("Team_1.prod-x").name == "Team_1.prod-x"
    assert daemon.client("x" * 76).content() == []


# -- concurrency ----------------------------------------------------------------------------------


def test_second_writer_on_the_same_ref_is_unavailable_ref_locked(daemon: Daemon) -> None:
    client = daemon.client()
    gate = threading.Event()
    chunks = [b"a" * 1000, b"b" * 1000]
    first = Upload(client, "layer-1", gated(chunks, gate), commit=True, lease=hold(client))
    first.start()
    try:
        wait_until(lambda: offset_of(client, "layer-1") == 1000, what="first writer")
        locked = "ref layer-1 locked: another writer is open, retry later"
        with pytest.raises(Unavailable) as exc:
            client.write_content("layer-1", b"intruder")
        assert assert_error(exc.value, "unavailable") == locked
        with pytest.raises(Unavailable) as exc:
            client.abort_ingest("layer-1")
        assert exc.value.message == locked
        with pytest.raises(Unavailable) as exc:
            client.commit_content("layer-1")
        assert exc.value.message == locked
    finally:
        gate.set()
    info = first.outcome()
    assert isinstance(info, ContentInfo)
    assert info.digest == digest_of(b"".join(chunks))
    assert b"".join(client.read_content(info.digest)) == b"".join(chunks)


def test_concurrent_ingests_of_one_digest_under_two_refs_store_one_blob(
    daemon: Daemon,
) -> None:
    client = daemon.client()
    data = os.urandom(2 * MIB + 5)
    chunks = [data[:MIB], data[MIB:]]
    gate = threading.Event()
    lease = hold(client)
    uploads = [
        Upload(client, ref, gated(chunks, gate), commit=True, lease=lease)
        for ref in ("layer-x", "layer-y")
    ]
    for upload in uploads:
        upload.start()
    try:
        # Both writers are open at once before either finishes.
        wait_until(
            lambda: all(offset_of(client, u.ref) >= MIB for u in uploads), what="both writers"
        )
        assert sorted(s.ref for s in client.ingests()) == ["layer-x", "layer-y"]
    finally:
        gate.set()
    outcomes = [u.outcome() for u in uploads]
    done = [o for o in outcomes if isinstance(o, ContentInfo)]
    assert done, outcomes
    for outcome in outcomes:
        if isinstance(outcome, ContentInfo):
            assert (outcome.digest, outcome.size) == (digest_of(data), len(data))
        else:
            assert isinstance(outcome, AlreadyExists), outcome
            assert outcome.message == f"content {digest_of(data)} already exists"
    assert blob_files(daemon) == [digest_of(data).removeprefix("sha256:")]
    assert client.ingests() == []
    assert list(ingest_dir(daemon).iterdir()) == []
    assert [i.digest for i in client.content()] == [digest_of(data)]


# -- ranged reads ---------------------------------------------------------------------------------

RANGE_DATA = bytes(range(256)) * 4  # 1024 bytes
RANGE_DIGEST = digest_of(RANGE_DATA)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the read-only range tests, holding RANGE_DATA and an empty blob."""
    with Daemon(tmp_path_factory.mktemp("ranges")) as running:
        client = running.client()
        lease = hold(client)
        client.write_content("ranges", RANGE_DATA, commit=True, lease=lease)
        client.write_content("empty", b"", commit=True, lease=lease)
        yield running


def get_blob(daemon: Daemon, digest: str, headers: dict[str, str]) -> Any:
    return request(
        daemon.address,
        "GET",
        f"/v1/content/{digest}/blob",
        headers={"Moorage-Namespace": "default", **headers},
    )


@pytest.mark.parametrize(
    ("range_", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, 1023),
        ("bytes=1000-5000", 1000, 1023),
        ("bytes=1023-1023", 1023, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=-5000", 0, 1023),
        ("bytes=0-", 0, 1023),
    ],
)
def test_ranged_read_answers_206_with_content_range(
    reader: Daemon, range_: str, start: int, end: int
) -> None:
    response = get_blob(reader, RANGE_DIGEST, {"Range": range_})
    body = response.read()
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/1024"
    assert int(response.headers["content-length"]) == end - start + 1
    assert body == RANGE_DATA[start : end + 1]


def test_read_without_range_answers_200_with_the_whole_blob(reader: Daemon) -> None:
    response = get_blob(reader, RANGE_DIGEST, {})
    assert response.read() == RANGE_DATA
    assert response.status == 200
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["docker-content-digest"] == RANGE_DIGEST
    assert "content-range" not in response.headers


@pytest.mark.parametrize("range_", ["bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=9-3"])
def test_unsatisfiable_range_is_416_out_of_range_with_the_size(reader: Daemon, range_: str) -> None:
    response = get_blob(reader, RANGE_DIGEST, {"Range": range_})
    content_range = response.headers.get("content-range")
    message = assert_error(response, "out_of_range")
    assert message == f"range {range_!r} is outside the blob of 1024 bytes"
    assert content_range == "bytes */1024"


@pytest.mark.parametrize("range_", ["bytes=0-1,5-6", "items=0-1", "bytes=-", "bytes=a-b"])
def test_malformed_range_is_invalid_argument(reader: Daemon, range_: str) -> None:
    message = assert_error(get_blob(reader, RANGE_DIGEST, {"Range": range_}), "invalid_argument")
    assert message == f"unsupported Range {range_!r}: use bytes=START-END"


def test_ranged_read_of_an_empty_blob(reader: Daemon) -> None:
    """Only a suffix range is satisfiable on an empty blob: the answer is the whole (empty) blob."""
    empty = digest_of(b"")
    response = get_blob(reader, empty, {"Range": "bytes=-10"})
    assert response.read() == b""
    assert response.status == 200
    assert "content-range" not in response.headers
    response = get_blob(reader, empty, {"Range": "bytes=0-"})
    assert response.headers.get("content-range") == "bytes */0"
    assert_error(response, "out_of_range")


def test_client_read_content_takes_offset_and_size(reader: Daemon) -> None:
    client = reader.client()
    assert b"".join(client.read_content(RANGE_DIGEST, 10, 20)) == RANGE_DATA[10:30]
    assert b"".join(client.read_content(RANGE_DIGEST, 1000)) == RANGE_DATA[1000:]
    assert b"".join(client.read_content(RANGE_DIGEST, 1000, 5000)) == RANGE_DATA[1000:]
    with pytest.raises(OutOfRange) as exc:
        b"".join(client.read_content(RANGE_DIGEST, 2000))
    assert exc.value.message == "range 'bytes=2000-' is outside the blob of 1024 bytes"


def test_ranged_read_in_another_namespace_is_not_found(reader: Daemon) -> None:
    response = get_blob(reader, RANGE_DIGEST, {"Range": "bytes=0-1", "Moorage-Namespace": "b"})
    assert assert_error(response, "not_found") == f"content {RANGE_DIGEST} not found"


# -- leases ---------------------------------------------------------------------------------------


def test_lease_created_without_id_gets_a_generated_one(daemon: Daemon) -> None:
    client = daemon.client()
    first, second = client.create_lease(), client.create_lease()
    assert re.fullmatch(r"\d+-[A-Za-z0-9]+", first.id), first.id
    assert first.id != second.id
    assert first.labels == {} and first.created_at is not None
    assert sorted(x.id for x in client.leases()) == sorted([first.id, second.id])


def test_lease_created_with_id_and_labels(daemon: Daemon) -> None:
    client = daemon.client()
    lease = client.create_lease("pull-1", {"team": "a"})
    assert (lease.id, lease.labels) == ("pull-1", {"team": "a"})
    with pytest.raises(AlreadyExists) as exc:
        client.create_lease("pull-1")
    assert assert_error(exc.value, "already_exists") == "lease 'pull-1' already exists"
    for bad in ("bad id", "a..b", "pull-1\n"):
        with pytest.raises(InvalidArgument) as exc:
            client.create_lease(bad)
        assert exc.value.message.startswith("lease id ")
    assert [x.id for x in client.leases()] == ["pull-1"]


def test_lease_expiry_sets_the_gc_expire_label(daemon: Daemon) -> None:
    client = daemon.client()
    before = datetime.now(UTC)
    lease = client.create_lease("tmp", expire=3600)
    raw = lease.labels[EXPIRE_LABEL]
    assert raw.endswith("Z")
    expires = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    assert before + timedelta(seconds=3599) <= expires <= datetime.now(UTC) + timedelta(hours=1)
    explicit = client.create_lease("fixed", {EXPIRE_LABEL: "2030-01-02T03:04:05Z"})
    assert explicit.labels == {EXPIRE_LABEL: "2030-01-02T03:04:05Z"}
    for bad in (0, -5):
        with pytest.raises(InvalidArgument) as exc:
            client.create_lease("never", expire=bad)
        assert exc.value.message == "expire must be a positive number of seconds"


def test_lease_list_filters(daemon: Daemon) -> None:
    client = daemon.client()
    client.create_lease("a1", {"team": "a"})
    client.create_lease("a2", {"team": "a", "tier": "gold"})
    client.create_lease("b1", {"team": "b"}, expire=600)

    def ids(*filters: str) -> list[str]:
        return [x.id for x in client.leases(list(filters))]

    assert ids() == ["a1", "a2", "b1"]
    assert ids("id==a2") == ["a2"]
    assert ids("labels.team==a") == ["a1", "a2"]
    assert ids("labels.team==a,labels.tier==gold") == ["a2"]  # AND
    assert ids("id==a1", "id==b1") == ["a1", "b1"]  # OR
    assert ids('labels."containerd.io/gc.expire"') == ["b1"]
    assert ids("id~=^a") == ["a1", "a2"]
    assert ids("labels.team!=a") == ["b1"]
    with pytest.raises(InvalidArgument):
        client.leases(["id==a,,"])


def test_ingest_with_lease_header_adds_the_ingest_then_the_blob_to_the_lease(
    daemon: Daemon,
) -> None:
    client = daemon.client()
    client.create_lease("pull")
    data = b"leased bytes"
    client.write_content("layer-1", data[:5], lease="pull")
    assert [(r.type, r.id) for r in client.lease_resources("pull")] == [("ingests", "layer-1")]
    info = client.write_content("layer-1", data[5:], offset=5, commit=True, lease="pull")
    assert isinstance(info, ContentInfo)
    # Committing moves the hold from the ingest to the blob.
    assert [(r.type, r.id) for r in client.lease_resources("pull")] == [("content", info.digest)]
    client.add_lease_resource("pull", "snapshots/overlayfs", "k1")
    assert [(r.type, r.id) for r in client.lease_resources("pull")] == [
        ("content", info.digest),
        ("snapshots/overlayfs", "k1"),
    ]
    with pytest.raises(InvalidArgument):
        client.add_lease_resource("pull", "bogus", "x")
    with pytest.raises(NotFound) as exc:
        client.write_content("layer-2", b"x", lease="nope")
    assert exc.value.message == "lease 'nope' not found"
    assert [s.ref for s in client.ingests()] == []


def test_deleted_lease_is_gone(daemon: Daemon) -> None:
    client = daemon.client()
    client.create_lease("l1")
    client.create_lease("l2")
    client.delete_lease("l1")
    assert [x.id for x in client.leases()] == ["l2"]
    for call in (lambda: client.delete_lease("l1"), lambda: client.lease_resources("l1")):
        with pytest.raises(NotFound) as exc:
            call()
        assert exc.value.message == "lease 'l1' not found"


def test_content_namespace_and_lease_events_reach_the_namespaces_subscriber(
    daemon: Daemon,
) -> None:
    client = daemon.client("evt")
    events = Events(client)
    events.start()
    events.sync()
    data = b"event payload"
    digest = digest_of(data)

    client.delete_namespace("evt")  # only the sync leases were in it: they go with it
    client.create_namespace("evt", {"team": "a"})
    client.label_namespace("evt", {"team": "b"})
    client.create_lease("l1", {"k": "v"})
    daemon.client("elsewhere").create_lease("not-for-evt")
    client.write_content("r", data, commit=True, lease="l1")
    client.delete_content(digest)
    client.delete_lease("l1")

    got = [(e.namespace, e.topic, e.type, e.event) for e in events.take(7)]
    assert got == [
        ("evt", "/namespaces/delete", "NamespaceDelete", {"name": "evt"}),
        ("evt", "/namespaces/create", "NamespaceCreate", {"name": "evt", "labels": {"team": "a"}}),
        ("evt", "/namespaces/update", "NamespaceUpdate", {"name": "evt", "labels": {"team": "b"}}),
        ("evt", "/leases/create", "LeaseCreate", {"id": "l1", "labels": {"k": "v"}}),
        ("evt", "/content/create", "ContentCreate", {"digest": digest, "size": len(data)}),
        ("evt", "/content/delete", "ContentDelete", {"digest": digest}),
        ("evt", "/leases/delete", "LeaseDelete", {"id": "l1"}),
    ]
    assert events.queue.empty()


def test_event_filters_select_topics(daemon: Daemon) -> None:
    client = daemon.client("evt")
    collected: queue.Queue[EventEnvelope] = queue.Queue()

    def follow() -> None:
        with contextlib.suppress(MoorageError, OSError):
            for envelope in client.events(['topic~="^/content/"']):
                collected.put(envelope)

    threading.Thread(target=follow, daemon=True).start()
    # No lease event arrives: write and delete content until the first event shows up.
    for i in range(100):
        client.create_lease(f"noise-{i}")
        blob = f"probe-{i}".encode()
        client.write_content(f"probe-{i}", blob, commit=True)
        with contextlib.suppress(queue.Empty):
            first = collected.get(timeout=0.2)
            break
    else:
        raise AssertionError("no content event arrived")
    assert first.topic == "/content/create"
    time.sleep(0.2)
    rest = []
    while not collected.empty():
        rest.append(collected.get_nowait())
    assert {e.topic for e in rest} <= {"/content/create"}


# -- labels ---------------------------------------------------------------------------------------


def test_label_over_4096_bytes_is_invalid_argument_everywhere(daemon: Daemon) -> None:
    client = daemon.client()
    data = b"labelled"
    lease = hold(client)
    digest = client.write_content("r", data, commit=True, lease=lease).digest  # type: ignore[union-attr]
    at_limit = {"k": "v" * 4095}
    over = {"k": "v" * 4096}
    too_big = "label 'k': key and value are 4097 bytes, over the 4096 limit"

    assert client.label_content(digest, at_limit).labels == at_limit
    calls: list[Callable[[], Any]] = [
        lambda: client.label_content(digest, over),
        lambda: client.create_lease("other", over),
        lambda: client.create_namespace("other", over),
        lambda: client.write_content("r2", b"more", commit=True, labels=over),
        lambda: client.commit_content("r3", labels=over),
    ]
    client.write_content("r3", b"pending", lease=lease)
    for call in calls:
        with pytest.raises(InvalidArgument) as exc:
            call()
        assert assert_error(exc.value, "invalid_argument") == too_big
    assert client.content_info(digest).labels == at_limit
    assert [x.digest for x in client.content()] == [digest]
    assert [x.id for x in client.leases()] == [lease]
    # Nothing was written for the rejected upload, and the pending ingest is still usable.
    assert [(s.ref, s.offset) for s in client.ingests()] == [("r3", 7)]
    assert client.commit_content("r3").digest == digest_of(b"pending")
    # Multi-byte characters count in bytes.
    with pytest.raises(InvalidArgument):
        client.label_content(digest, {"k": "é" * 2048})


def test_label_update_merges_and_empty_value_removes(daemon: Daemon) -> None:
    client = daemon.client()
    info = client.write_content(
        "r", b"x", commit=True, labels={"a": "1", "b": "2"}, lease=hold(client)
    )
    digest = info.digest  # type: ignore[union-attr]
    assert client.label_content(digest, {"b": "", "c": "3"}).labels == {"a": "1", "c": "3"}
    assert [i.digest for i in client.content(["labels.c==3"])] == [digest]
    assert client.content(["labels.b"]) == []


# -- CLI ------------------------------------------------------------------------------------------


def moorage_cmd(daemon: Daemon, *args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli.main", "--address", daemon.address, *args]


def moorage(daemon: Daemon, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(moorage_cmd(daemon, *args), stderr=subprocess.PIPE, timeout=60, **kw)


def test_cli_ingest_then_get_round_trips_the_bytes(daemon: Daemon, tmp_path: Path) -> None:
    data = os.urandom(5 * MIB + 3)
    digest = digest_of(data)
    source, out = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(data)
    assert moorage(daemon, "leases", "create", "--id", "cli").returncode == 0
    with source.open("rb") as stdin:
        done = moorage(
            daemon,
            "content",
            "ingest",
            "--lease",
            "cli",
            "--expected-digest",
            digest,
            "blob-1",
            stdin=stdin,
        )
    assert (done.returncode, done.stdout.decode(), done.stderr) == (0, digest + "\n", b"")
    with out.open("wb") as stdout:
        got = moorage(daemon, "content", "get", digest, stdout=stdout)
    assert (got.returncode, got.stderr) == (0, b"")
    assert out.read_bytes() == data
    listed = moorage(daemon, "content", "ls", "-q")
    assert listed.stdout.decode().split() == [digest]
    # Ingesting it again is a no-op that says so.
    with source.open("rb") as stdin:
        again = moorage(
            daemon, "content", "ingest", "--expected-digest", digest, "blob-2", stdin=stdin
        )
    assert again.returncode == 0
    assert again.stderr.decode() == f"moorage: content {digest} already exists\n"


def test_cli_ingest_with_wrong_expected_digest_fails(daemon: Daemon) -> None:
    wrong = digest_of(b"not this")
    done = moorage(daemon, "content", "ingest", "--expected-digest", wrong, "r", input=b"this")
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"moorage: failed_precondition: unexpected commit digest {digest_of(b'this')}, "
        f"expected {wrong}\n"
    )
    assert daemon.client().content() == []


def test_cli_active_lists_an_interrupted_ingest_which_ingest_then_resumes(
    daemon: Daemon, tmp_path: Path
) -> None:
    client = daemon.client()
    data = os.urandom(4 * MIB)
    proc = subprocess.Popen(
        moorage_cmd(daemon, "content", "ingest", "layer-cli"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(data[: 3 * MIB])
        proc.stdin.flush()
        wait_until(lambda: offset_of(client, "layer-cli") >= 2 * MIB, what="2 MiB received")
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    # The daemon notices the broken upload and releases the ref.
    wait_until(lambda: _ref_free(client, "layer-cli"), what="ref released")
    offset = client.ingest_status("layer-cli").offset
    assert 0 < offset <= 3 * MIB

    active = moorage(daemon, "content", "active")
    assert active.returncode == 0, active.stderr
    header, *rows = active.stdout.decode().splitlines()
    assert header.split() == ["REF", "OFFSET", "TOTAL", "UPDATED"]
    assert [row.split()[:2] for row in rows] == [["layer-cli", str(offset)]]
    as_json = json.loads(moorage(daemon, "content", "active", "--format", "json").stdout)
    assert [(s["ref"], s["offset"]) for s in as_json] == [("layer-cli", offset)]

    # Re-running the same command resumes from the recorded offset.
    source = tmp_path / "layer.bin"
    source.write_bytes(data)
    with source.open("rb") as stdin:
        done = moorage(daemon, "content", "ingest", "layer-cli", stdin=stdin)
    assert (done.returncode, done.stdout.decode()) == (0, digest_of(data) + "\n")
    assert moorage(daemon, "content", "active").stdout.decode().splitlines()[1:] == []


def _ref_free(client: Client, ref: str) -> bool:
    """True once no writer holds ``ref``: an empty write at the current offset goes through."""
    try:
        client.write_content(ref, b"", offset=offset_of(client, ref))
    except (Unavailable, OutOfRange):
        return False
    return True


def test_cli_lease_commands(daemon: Daemon) -> None:
    created = moorage(daemon, "leases", "create", "--id", "cli-lease", "--expire", "60", "a=b")
    assert (created.returncode, created.stdout.decode()) == (0, "cli-lease\n")
    listed = moorage(daemon, "leases", "ls", "-q")
    assert listed.stdout.decode().split() == ["cli-lease"]
    assert EXPIRE_LABEL in daemon.client().leases()[0].labels
    removed = moorage(daemon, "leases", "rm", "cli-lease")
    assert (removed.returncode, removed.stdout.decode()) == (0, "cli-lease\n")
    assert daemon.client().leases() == []
