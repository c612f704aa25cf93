"""Progress tracking and the keyed locks that make concurrent pulls share work."""

from __future__ import annotations

import anyio

from runtime.core.locks import KeyedLocks
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.images.api import BlobProgress, BlobStatus, Done, Resolved, UnpackStatus
from runtime.plugins.images.progress import Tracker

LAYER = Descriptor(
    mediaType="application/vnd.oci.image.layer.v1.tar+gzip", digest="sha256:" + "a" * 64, size=1000
)


async def test_tracker_sends_latest_states_then_the_result_last() -> None:
    published: list[tuple[str, object]] = []
    tracker = Tracker("img", "/images/pull/progress", lambda t, e: published.append((t, e)))
    tracker.resolved(LAYER, "http://h")
    tracker.add(LAYER, "layer")
    tracker.status(LAYER.digest, BlobStatus.DOWNLOADING, host="http://h")
    for offset in range(0, 1000, 100):
        tracker.advance(LAYER.digest, offset)
    tracker.status(LAYER.digest, BlobStatus.DONE)
    tracker.unpack(LAYER.digest, UnpackStatus.APPLIED, chain_id="sha256:c")
    tracker.finish(Done(seconds=1.0))
    messages = [m async for m in tracker.messages(interval=0)]
    assert isinstance(messages[0], Resolved)
    blob = messages[1]
    assert isinstance(blob, BlobProgress)
    assert (blob.status, blob.offset, blob.unpack, blob.host) == (
        BlobStatus.DONE,
        1000,
        UnpackStatus.APPLIED,
        "http://h",
    )
    assert isinstance(messages[-1], Done) and len(messages) == 3
    # Byte counts are not published on the bus, status changes are.
    assert [e.blob.status for _, e in published] == [  # type: ignore[attr-defined]
        BlobStatus.DOWNLOADING,
        BlobStatus.DONE,
        BlobStatus.DONE,
    ]


async def test_tracker_ends_with_the_result_without_waiting_out_the_interval() -> None:
    """A pull that ends between two throttled updates answers at once, not an interval later."""
    tracker = Tracker("img")
    tracker.resolved(LAYER, "http://h")
    seen: list[object] = []

    async def read() -> None:
        async for message in tracker.messages(interval=3600):
            seen.append(message)

    # A guard against waiting the hour, not a measurement: any answer within it passes.
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            assert len(seen) == 1, "the first update goes out at once"
            tracker.finish(Done(seconds=0.1))
    assert isinstance(seen[-1], Done)


async def test_keyed_locks_serialise_per_key_and_report_waiting() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    waited: list[bool] = []

    async def user(name: str, key: str) -> None:
        async with locks.hold(key) as w:
            waited.append(w)
            order.append(f"{name}+")
            # Long enough that b queues behind a even on a loaded machine.
            await anyio.sleep(0.3)
            order.append(f"{name}-")

    async with anyio.create_task_group() as tg:
        tg.start_soon(user, "a", "k")
        await anyio.sleep(0.05)
        tg.start_soon(user, "b", "k")
        tg.start_soon(user, "c", "other")
    assert order.index("a-") < order.index("b+")
    assert sorted(waited) == [False, False, True]
    assert len(locks) == 0
