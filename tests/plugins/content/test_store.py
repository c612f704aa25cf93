"""Specification of the local content store: ingests, commits, locks, reads, crash resume."""

from __future__ import annotations

import gc
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from runtime.plugins.content.api import Store, validate_digest
from runtime.plugins.content.local.files import BATCH_SIZE, READ_CHUNK_SIZE
from runtime.plugins.content.local.store import ContentStore

MIB = 1 << 20


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def blobs(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.root / "blobs" / "sha256"))


def ingests(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.root / "ingest"))


def locked_message(ref: str) -> str:
    return f"ref {ref} locked: another writer is open, retry later"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


async def ingest(store: ContentStore, ref: str, data: bytes) -> str:
    writer = await store.open_writer(ref)
    await writer.write(data)
    return await writer.commit()


def test_local_store_satisfies_the_store_protocol(store: ContentStore) -> None:
    protocol_view: Store = store  # checked by mypy; at runtime only that it constructs
    assert protocol_view is store


# -- commit ------------------------------------------------------------------------------------


async def test_commit_rejects_digest_mismatch(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    await writer.write(b"hello")
    with pytest.raises(FailedPrecondition) as info:
        await writer.commit(expected=digest_of(b"world"))
    assert info.value.message == (
        f"unexpected commit digest {digest_of(b'hello')}, expected {digest_of(b'world')}"
    )
    assert blobs(store) == []
    # The ingest stays for the client to abort or retry, and the ref is free again.
    assert (await store.status("r")).offset == 5
    writer = await store.open_writer("r")
    assert await writer.commit() == digest_of(b"hello")


async def test_commit_rejects_size_mismatch(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    await writer.write(b"hello")
    with pytest.raises(FailedPrecondition) as info:
        await writer.commit(size=6)
    assert info.value.message == "unexpected commit size 5, expected 6"
    assert blobs(store) == []
    assert (await store.status("r")).offset == 5


async def test_commit_checks_the_total_given_at_open(store: ContentStore) -> None:
    writer = await store.open_writer("r", total=10)
    await writer.write(b"hello")
    with pytest.raises(FailedPrecondition, match="unexpected commit size 5, expected 10"):
        await writer.commit()
    assert blobs(store) == []


async def test_commit_of_existing_digest_is_already_exists_and_keeps_blob(
    store: ContentStore,
) -> None:
    digest = await ingest(store, "first", b"same bytes")
    blob = store.root / "blobs" / "sha256" / validate_digest(digest)
    before = os.stat(blob)

    writer = await store.open_writer("second")
    await writer.write(b"same bytes")
    with pytest.raises(AlreadyExists, match=f"content {digest}: already exists"):
        await writer.commit()

    after = os.stat(blob)
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_nlink,
    )
    assert blob.read_bytes() == b"same bytes"
    assert ingests(store) == []  # the duplicate ingest is dropped


async def test_open_writer_with_expected_existing_digest_is_already_exists(
    store: ContentStore,
) -> None:
    digest = await ingest(store, "first", b"x")
    with pytest.raises(AlreadyExists, match=f"content {digest}: already exists"):
        await store.open_writer("again", expected=digest)
    assert ingests(store) == []
    assert await store.list_statuses() == []


async def test_committed_blob_is_read_only_and_listed(store: ContentStore) -> None:
    digest = await ingest(store, "r", b"abc")
    path = store.root / "blobs" / "sha256" / validate_digest(digest)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    info = await store.info(digest)
    assert (info.digest, info.size) == (digest, 3)
    assert await store.walk() == [info]
    assert await store.exists(digest)
    assert ingests(store) == []


async def test_commit_on_closed_writer_is_failed_precondition(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    await writer.close()
    with pytest.raises(FailedPrecondition, match="writer for ref r is closed"):
        await writer.commit()
    with pytest.raises(FailedPrecondition, match="writer for ref r is closed"):
        await writer.write(b"x")


# -- locking -----------------------------------------------------------------------------------


async def test_second_writer_on_same_ref_is_ref_locked(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    with pytest.raises(Unavailable) as info:
        await store.open_writer("r")
    assert info.value.message == locked_message("r")
    with pytest.raises(Unavailable, match="ref r locked"):
        await store.abort("r")
    # A second store object on the same root has its own registry: flock catches it.
    with pytest.raises(Unavailable, match="ref r locked"):
        await ContentStore(store.root).open_writer("r")
    await writer.close()
    await (await store.open_writer("r")).close()


async def test_concurrent_opens_of_one_ref_let_exactly_one_in(store: ContentStore) -> None:
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            writer = await store.open_writer("r")
        except Unavailable:
            outcomes.append("locked")
            return
        outcomes.append("open")
        await anyio.sleep(0.01)  # hold it while the others try
        await writer.close()

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(attempt)
    assert sorted(outcomes) == ["locked"] * 4 + ["open"]


async def test_close_in_a_cancelled_scope_still_releases_the_ref(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    await writer.write(b"kept")  # small: still in the batch buffer
    with anyio.CancelScope() as scope:
        scope.cancel()
        await writer.close()
    writer = await store.open_writer("r")
    assert writer.status().offset == 4
    await writer.close()


async def test_writer_dropped_without_close_releases_the_ref(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    with pytest.warns(ResourceWarning, match="writer for ref r was not closed"):
        del writer
        gc.collect()
    await (await store.open_writer("r")).close()


async def test_ref_lock_holds_across_processes(store: ContentStore) -> None:
    script = textwrap.dedent(
        """
        import sys
        import anyio
        from pathlib import Path
        from runtime.plugins.content.local.store import ContentStore

        async def main() -> None:
            try:
                await ContentStore(Path(sys.argv[1])).open_writer("r")
            except Exception as exc:
                print(type(exc).__name__, exc)

        anyio.run(main)
        """
    )
    writer = await store.open_writer("r")
    result = await anyio.run_process([sys.executable, "-c", script, str(store.root)])
    assert result.stdout.decode().strip() == f"Unavailable {locked_message('r')}"
    await writer.close()


# -- writes and resume -------------------------------------------------------------------------


async def test_open_writer_resumes_from_recorded_offset(store: ContentStore) -> None:
    data = random.Random(1).randbytes(3 * MIB + 12345)
    writer = await store.open_writer("r", total=len(data))
    await writer.write(data[: 2 * MIB])
    await writer.write(data[2 * MIB : 2 * MIB + 100])  # small: sits in the batch until close
    assert writer.status().offset == 2 * MIB + 100
    await writer.close()

    status = await store.status("r")
    assert (status.ref, status.offset, status.total) == ("r", 2 * MIB + 100, len(data))
    with pytest.raises(FailedPrecondition, match="total 5 conflicts with recorded total"):
        await store.open_writer("r", total=5)

    writer = await store.open_writer("r")
    assert writer.status().offset == 2 * MIB + 100
    assert writer.status().total == len(data)
    assert writer.status().started_at == status.started_at
    await writer.write(data[writer.status().offset :])
    assert await writer.commit() == digest_of(data)
    assert (await store.info(digest_of(data))).size == len(data)


async def test_write_at_wrong_offset_is_out_of_range(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    await writer.write(b"0123456789")
    for bad in (5, 11, -1):
        with pytest.raises(OutOfRange) as info:
            await writer.write(b"x", offset=bad)
        assert info.value.message == f"ref r: write at offset {bad}, current offset is 10"
    await writer.write(b"abc", offset=10)
    assert await writer.commit() == digest_of(b"0123456789abc")


async def test_write_at_offset_zero_restarts_the_ingest(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    await writer.write(b"a" * (BATCH_SIZE + 10))
    await writer.write(b"fresh", offset=0)
    assert writer.status().offset == 5
    assert await writer.commit() == digest_of(b"fresh")


async def test_small_writes_are_batched_but_counted(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    piece = b"z" * 4096
    for _ in range(10):
        await writer.write(piece)
    assert writer.status().offset == 40960
    assert (await store.status("r")).offset == 40960  # the live writer answers
    assert await writer.commit() == digest_of(piece * 10)


async def test_concurrent_ingests_of_same_digest_under_different_refs(
    store: ContentStore,
) -> None:
    data = random.Random(2).randbytes(2 * MIB + 7)
    results: dict[str, str] = {}

    async def upload(ref: str) -> None:
        writer = await store.open_writer(ref, expected=digest_of(data))
        for i in range(0, len(data), 256 * 1024):
            await writer.write(data[i : i + 256 * 1024])
        try:
            results[ref] = await writer.commit()
        except AlreadyExists:
            results[ref] = "already exists"

    async with anyio.create_task_group() as tg:
        for ref in ("layer-a", "layer-b", "layer-c"):
            tg.start_soon(upload, ref)

    assert sorted(results.values()) == ["already exists", "already exists", digest_of(data)]
    assert blobs(store) == [validate_digest(digest_of(data))]
    assert ingests(store) == []
    assert b"".join([c async for c in store.read(digest_of(data))]) == data


async def test_abort_removes_ingest(store: ContentStore) -> None:
    writer = await store.open_writer("closed")
    await writer.write(b"partial")
    await writer.close()
    await store.abort("closed")
    with pytest.raises(NotFound, match="ingest closed: not found"):
        await store.status("closed")
    with pytest.raises(NotFound, match="ingest closed: not found"):
        await store.abort("closed")

    writer = await store.open_writer("open")
    await writer.write(b"partial")
    await writer.abort()
    assert ingests(store) == []
    assert await store.list_statuses() == []
    assert blobs(store) == []


async def test_list_statuses_reports_open_and_closed_ingests(store: ContentStore) -> None:
    closed = await store.open_writer("b-closed", total=3)
    await closed.write(b"abc")
    await closed.close()
    live = await store.open_writer("a-live", expected=digest_of(b"x"))
    await live.write(b"x")
    statuses = await store.list_statuses()
    assert [(s.ref, s.offset, s.total, s.expected) for s in statuses] == [
        ("a-live", 1, None, digest_of(b"x")),
        ("b-closed", 3, 3, None),
    ]
    await live.close()


async def test_resume_after_process_killed(store: ContentStore) -> None:
    size = 64 * MIB
    script = textwrap.dedent(
        """
        import random, sys
        import anyio
        from pathlib import Path
        from runtime.plugins.content.local.store import ContentStore

        async def main() -> None:
            store = ContentStore(Path(sys.argv[1]))
            data = random.Random(7).randbytes(int(sys.argv[2]))
            writer = await store.open_writer("killed", total=len(data))
            step = 1_000_003  # not a multiple of the batch size
            for i in range(0, len(data), step):
                await writer.write(data[i : i + step])
                print(writer.status().offset, flush=True)
            await anyio.sleep(3600)  # never commits

        anyio.run(main)
        """
    )
    data = random.Random(7).randbytes(size)
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(store.root), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        while True:
            line = child.stdout.readline()
            assert line, f"child died early: {child.stderr.read() if child.stderr else ''}"
            if int(line) >= 8 * MIB:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()

    assert blobs(store) == []
    status = await store.status("killed")
    assert 0 < status.offset <= size
    assert status.total == size
    [ingest_dir] = ingests(store)
    assert (store.root / "ingest" / ingest_dir / "data").read_bytes() == data[: status.offset]

    writer = await store.open_writer("killed")
    assert writer.status().offset == status.offset
    for i in range(status.offset, size, MIB):
        await writer.write(data[i : i + MIB])
    assert await writer.commit() == digest_of(data)
    assert blobs(store) == [validate_digest(digest_of(data))]
    assert ingests(store) == []


async def test_resume_after_crash_between_link_and_cleanup_leaves_blob_untouched(
    store: ContentStore,
) -> None:
    """The ingest's data may still be a second name of the blob; resuming must not write to it."""
    writer = await store.open_writer("r")
    await writer.write(b"committed")
    await writer.close()
    [ingest_dir] = ingests(store)
    data = store.root / "ingest" / ingest_dir / "data"
    blob = store.root / "blobs" / "sha256" / validate_digest(digest_of(b"committed"))
    os.link(data, blob)  # as if commit linked, then the process died

    writer = await store.open_writer("r")
    assert writer.status().offset == 0
    await writer.write(b"committed")
    with pytest.raises(AlreadyExists):
        await writer.commit()
    assert blob.read_bytes() == b"committed"
    assert os.stat(blob).st_nlink == 1
    assert ingests(store) == []


# -- blobs -------------------------------------------------------------------------------------


async def test_read_with_byte_range(store: ContentStore) -> None:
    data = random.Random(3).randbytes(2 * READ_CHUNK_SIZE + 5)
    digest = await ingest(store, "r", data)

    async def read(offset: int = 0, size: int | None = None) -> list[bytes]:
        return [chunk async for chunk in store.read(digest, offset, size)]

    assert b"".join(await read(10, 100)) == data[10:110]
    chunks = await read()
    assert [len(c) for c in chunks] == [READ_CHUNK_SIZE, READ_CHUNK_SIZE, 5]
    assert b"".join(chunks) == data
    assert b"".join(await read(len(data) - 3, 1000)) == data[-3:]  # cut at the end
    assert await read(len(data)) == []
    assert await read(5, 0) == []
    with pytest.raises(OutOfRange, match=rf"offset {len(data) + 1} is past the end"):
        await read(len(data) + 1)
    with pytest.raises(OutOfRange):
        await read(-1)
    with pytest.raises(OutOfRange):
        await read(0, -1)
    with store.open_reader(digest) as f:
        f.seek(7)
        assert f.read(9) == data[7:16]


async def test_missing_blob_is_not_found(store: ContentStore) -> None:
    digest = digest_of(b"nothing")
    message = f"content {digest}: not found"
    assert not await store.exists(digest)
    with pytest.raises(NotFound, match=message):
        await store.info(digest)
    with pytest.raises(NotFound, match=message):
        await store.delete(digest)
    with pytest.raises(NotFound, match=message):
        store.open_reader(digest)
    with pytest.raises(NotFound, match=message):
        [c async for c in store.read(digest)]


async def test_delete_removes_blob(store: ContentStore) -> None:
    digest = await ingest(store, "r", b"bye")
    await store.delete(digest)
    assert not await store.exists(digest)
    assert await store.walk() == []


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "a" * 64,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha512:" + "a" * 128,
        "SHA256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        "sha256:../../../../etc/passwd",
        "sha256:" + "a" * 62 + "/x",
    ],
)
async def test_invalid_digest_is_invalid_argument(store: ContentStore, digest: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid digest"):
        await store.info(digest)
    with pytest.raises(InvalidArgument):
        await store.exists(digest)
    with pytest.raises(InvalidArgument):
        await store.delete(digest)
    with pytest.raises(InvalidArgument):
        store.open_reader(digest)
    with pytest.raises(InvalidArgument):
        [c async for c in store.read(digest)]
    with pytest.raises(InvalidArgument):
        await store.open_writer("r", expected=digest)
    writer = await store.open_writer("r")
    with pytest.raises(InvalidArgument):
        await writer.commit(expected=digest)
    await writer.abort()


async def test_empty_ref_is_invalid_argument(store: ContentStore) -> None:
    with pytest.raises(InvalidArgument, match="invalid ref ''"):
        await store.open_writer("")


# -- following an ingest while it is written ---------------------------------------------------


async def test_follower_reads_flushed_bytes_and_ends_only_at_commit(store: ContentStore) -> None:
    data = os.urandom(3 * BATCH_SIZE + 123)
    writer = await store.open_writer("r", total=len(data), expected=digest_of(data))
    follower = writer.follow()
    assert follower is not None
    read: list[bytes] = []

    def consume() -> None:
        while chunk := follower.read(MIB):
            read.append(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, consume)
        for start in range(0, len(data), 64 * 1024):
            await writer.write(data[start : start + 64 * 1024])
        # Everything flushed so far can be read, but no end yet: the tail is still batched.
        with anyio.fail_after(10):
            while sum(map(len, read)) < 3 * BATCH_SIZE:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        assert sum(map(len, read)) == 3 * BATCH_SIZE
        assert await writer.commit() == digest_of(data)
    follower.close()
    assert b"".join(read) == data


async def test_follower_raises_when_the_digest_is_wrong(store: ContentStore) -> None:
    writer = await store.open_writer("r", expected=digest_of(b"right"))
    follower = writer.follow()
    assert follower is not None
    await writer.write(b"wrong")
    with pytest.raises(FailedPrecondition):
        await writer.commit()
    # The bytes it could read are unverified; the follower ends in the commit's error.
    assert follower.read(5) == b"wrong"
    with pytest.raises(FailedPrecondition, match="unexpected commit digest"):
        follower.read(5)
    follower.close()
    assert blobs(store) == []


@pytest.mark.parametrize("end", ["close", "abort", "restart"])
async def test_follower_raises_when_the_ingest_ends_without_a_blob(
    store: ContentStore, end: str
) -> None:
    writer = await store.open_writer("r")
    follower = writer.follow()
    assert follower is not None
    await writer.write(b"x" * BATCH_SIZE)
    assert follower.read(BATCH_SIZE) == b"x" * BATCH_SIZE
    if end == "close":
        await writer.close()
    elif end == "abort":
        await writer.abort()
    else:
        await writer.write(b"y", 0)  # truncates: what the follower read is no longer there
    with pytest.raises(Unavailable, match="ingest r was"):
        follower.read(1)
    follower.close()
    if end == "restart":
        # A follower made after the restart reads the new bytes.
        again = writer.follow()
        assert again is not None
        assert await writer.commit() == digest_of(b"y")
        assert again.read() == b"y"
        again.close()


async def test_follower_blocked_in_read_is_interrupted(store: ContentStore) -> None:
    writer = await store.open_writer("r")
    follower = writer.follow()
    assert follower is not None
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                with pytest.raises(Unavailable, match="interrupted"):
                    await anyio.to_thread.run_sync(follower.read, 10)

            tg.start_soon(read)
            await anyio.sleep(0.1)
            follower.interrupt()
    follower.close()
    await writer.abort()


async def test_follow_of_a_closed_writer_is_none_and_a_late_follower_sees_the_end(
    store: ContentStore,
) -> None:
    data = b"z" * (BATCH_SIZE + 1)
    writer = await store.open_writer("r")
    await writer.write(data)
    follower = writer.follow()  # made late: starts at offset 0 all the same
    assert follower is not None
    assert await writer.commit() == digest_of(data)
    assert writer.follow() is None
    assert follower.read() == data
    assert follower.read(1) == b""
    follower.close()
    follower.close()  # idempotent
