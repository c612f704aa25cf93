"""The namespaced snapshotter under concurrent collection and cleanup.

Every write of the namespaced snapshotter asks the backend first and records
the outcome afterwards, in a separate transaction. A garbage collection (or a
cleanup) can therefore run between the two; these tests put one exactly there,
by making the backend method run it just after it answers:

* A ``prepare`` labelled ``containerd.io/snapshot.ref=<name>`` adopts a
  committed backend snapshot another namespace recorded (asked with ``stat``).
* A ``prepare`` or ``view`` on a parent, or a ``commit``, whose parent or
  active snapshot is collected meanwhile.
* A backend snapshot made but not yet recorded, which a cleanup must leave.
* Another write of the same key (a commit to the same name, a prepare whose
  key is that name) started while a commit is in the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from runtime.core.errors import AlreadyExists, NotFound
from runtime.plugins.gc.api import LABEL_ROOT
from runtime.plugins.snapshots.api import Info, Kind
from runtime.plugins.snapshots.service.namespaced import SNAPSHOT_REF_LABEL
from tests.fixtures.system import require_binary
from tests.plugins.gc.conftest import World

# Backend objects created within a clock tick of a collection's start are left for
# the next one; waiting a few ticks makes the layers below unambiguously "old".
SETTLE = 0.03


@pytest.fixture
def anyio_backend() -> str:
    # The native snapshotter's subprocesses dominate; one backend keeps the run short.
    return "asyncio"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    require_binary("cp")
    world = World(tmp_path)
    try:
        yield world
    finally:
        await world.close()


def collect_during_stat(world: World, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the backend's ``stat`` run a whole collection just after it answers.

    ``stat`` is the adoption's look at the backend, between the read of the
    records and the write of the new one: the window a collection must not
    be able to exploit. Returns the keys stat was asked about.
    """
    asked: list[str] = []
    real_stat: Callable[[str], Awaitable[Info]] = world.native.stat

    async def stat(key: str) -> Info:
        info = await real_stat(key)
        asked.append(key)
        await world.collector.collect()
        return info

    monkeypatch.setattr(world.native, "stat", stat)
    return asked


async def commit_layer(
    world: World, ns: str, name: str, labels: dict[str, str] | None = None
) -> None:
    await world.snapshots.prepare(ns, f"extract-{name}", "")
    await world.snapshots.commit(ns, name, f"extract-{name}", labels)


def after_backend(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    action: Callable[[], Awaitable[object]],
) -> list[str]:
    """Make the backend's ``method`` run ``action`` just after it answers.

    The namespaced snapshotter records what the backend did only afterwards:
    this is the window between the two. Waiting a few clock ticks first makes
    the backend snapshot unambiguously older than a collection the action
    starts (the disk phase leaves newer ones alone). Returns the first
    argument of each call, to show that the window was reached.
    """
    calls: list[str] = []
    real: Callable[..., Awaitable[object]] = getattr(world.native, method)

    async def wrapped(*args: object, **kwargs: object) -> object:
        answer = await real(*args, **kwargs)
        calls.append(str(args[0]))
        await anyio.sleep(SETTLE)
        await action()
        return answer

    monkeypatch.setattr(world.native, method, wrapped)
    return calls


async def assert_every_record_has_its_layer(world: World) -> None:
    state = await world.state()
    assert state.recorded_backend_keys <= state.backend_snapshots


async def assert_every_parent_is_recorded(world: World) -> None:
    """A record names its parent by its namespace's key: that record must exist."""

    def orphans(conn: Any) -> list[tuple[str, str, str]]:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT c.namespace, c.key, c.parent FROM snapshots c WHERE c.parent != '' "
                "AND NOT EXISTS (SELECT 1 FROM snapshots p WHERE p.namespace=c.namespace "
                "AND p.snapshotter=c.snapshotter AND p.key=c.parent AND p.kind='committed')"
            )
        ]

    assert await world.db.read(orphans) == []


async def assert_consistent(world: World) -> None:
    await assert_every_record_has_its_layer(world)
    await assert_every_parent_is_recorded(world)


async def test_adoption_of_a_layer_collected_meanwhile_unpacks_it_afresh(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection removing the shared layer after the stat makes the prepare go ahead.

    Namespace ``a``'s layer is garbage (no lease, no root): the collection that
    runs between the stat and the record deletes its record and its backend
    snapshot. Recording the adoption anyway would leave ``b`` a record of a
    layer that no longer exists, reported as already unpacked.
    """
    await commit_layer(world, "a", "layer")
    await world.leases.create("b", "pull")
    await anyio.sleep(SETTLE)
    asked = collect_during_stat(world, monkeypatch)

    await world.snapshots.prepare("b", "extract", "", {SNAPSHOT_REF_LABEL: "layer"}, lease="pull")

    assert len(asked) == 1  # the adoption did look, and the collection did run
    state = await world.state()
    assert state.snapshots == {("b", "extract")}
    await assert_every_record_has_its_layer(world)


async def test_adoption_of_a_layer_kept_by_its_namespace_survives_a_collection_meanwhile(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared layer is still recorded when the adoption is: it is shared, and stays."""
    await commit_layer(world, "a", "layer", {LABEL_ROOT: "1"})
    await world.leases.create("b", "pull")
    await anyio.sleep(SETTLE)
    collect_during_stat(world, monkeypatch)

    with pytest.raises(AlreadyExists, match="shared"):
        await world.snapshots.prepare(
            "b", "extract", "", {SNAPSHOT_REF_LABEL: "layer"}, lease="pull"
        )

    monkeypatch.undo()
    # Namespace a lets go of the layer; b's adoption alone keeps it, through collections.
    await world.snapshots.remove("a", "layer")
    await anyio.sleep(SETTLE)
    await world.collector.collect()
    state = await world.state()
    assert state.snapshots == {("b", "layer")}
    await assert_every_record_has_its_layer(world)


async def test_adoption_whose_parent_was_collected_meanwhile_is_not_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adopted record names its parent in its own namespace: that one must still exist."""
    # Held by a lease in a (a root label would be copied along with the adoption).
    await world.leases.create("a", "keep")
    await world.snapshots.prepare("a", "extract-base", "", lease="keep")
    await world.snapshots.commit("a", "base", "extract-base", lease="keep")
    await world.snapshots.prepare("a", "extract-top", "base", lease="keep")
    await world.snapshots.commit("a", "top", "extract-top", lease="keep")
    # b unpacked (adopted) the base earlier, but nothing holds it there any more.
    with pytest.raises(AlreadyExists):
        await world.snapshots.prepare("b", "extract-base", "", {SNAPSHOT_REF_LABEL: "base"})
    await anyio.sleep(SETTLE)
    collect_during_stat(world, monkeypatch)

    # Not adopted, and not unpacked afresh either: the parent it names is gone.
    with pytest.raises(NotFound, match="parent snapshot 'base'"):
        await world.snapshots.prepare("b", "extract-top", "base", {SNAPSHOT_REF_LABEL: "top"})

    state = await world.state()
    assert not {s for s in state.snapshots if s[0] == "b"}
    await assert_consistent(world)


# -- a parent (or the active snapshot) collected during a prepare, view or commit --------


@pytest.mark.parametrize("method", ["prepare", "view"])
async def test_snapshot_whose_parent_is_collected_meanwhile_is_not_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The child is recorded only if its parent's record is still the same layer.

    Nothing holds ``base``: the collection between the backend's answer and
    the record deletes its record. Recording ``work`` anyway would name a
    parent that no longer exists (and whose backend snapshot the next disk
    phase removes once ``work``'s is undone): the prepare fails instead, and
    undoes the backend snapshot it made.
    """
    await commit_layer(world, "a", "base")
    calls = after_backend(world, monkeypatch, method, world.collector.collect)

    with pytest.raises(NotFound, match="parent snapshot 'base' was removed while 'work'"):
        await getattr(world.snapshots, method)("a", "work", "base")

    assert len(calls) == 1
    state = await world.state()
    assert state.snapshots == set()
    assert calls[0] not in state.backend_snapshots
    await assert_consistent(world)
    # The parent's backend snapshot, kept while the child existed, goes with the next one.
    monkeypatch.undo()
    await anyio.sleep(SETTLE)
    await world.collector.collect()
    assert (await world.state()).backend_snapshots == set()


async def test_snapshot_whose_parent_survives_a_collection_meanwhile_is_recorded_whole(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent kept by the collection is still there: the child is recorded, with its layer."""
    await commit_layer(world, "a", "base", {LABEL_ROOT: "1"})
    await world.leases.create("a", "work")
    after_backend(world, monkeypatch, "prepare", world.collector.collect)

    await world.snapshots.prepare("a", "work", "base", lease="work")

    assert (await world.state()).snapshots == {("a", "base"), ("a", "work")}
    await assert_consistent(world)


async def test_commit_whose_active_snapshot_is_collected_meanwhile_is_not_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the committed record replaces the active one only if that one is still there.

    Nothing holds ``work`` nor its parent ``base``: the collection between
    the backend's commit and the record deletes both records. Recording
    ``top`` anyway would name a parent that no longer exists.
    """
    await commit_layer(world, "a", "base")
    await world.snapshots.prepare("a", "work", "base")
    calls = after_backend(world, monkeypatch, "commit", world.collector.collect)

    with pytest.raises(NotFound, match="snapshot 'work' was removed while it was committed"):
        await world.snapshots.commit("a", "top", "work")

    assert len(calls) == 1
    state = await world.state()
    assert state.snapshots == set()
    assert calls[0] not in state.backend_snapshots  # the backend commit is undone
    await assert_consistent(world)
    monkeypatch.undo()
    await anyio.sleep(SETTLE)
    await world.collector.collect()
    assert (await world.state()).backend_snapshots == set()


# -- two writers of one key: keys and names share a namespace's space -----------------------

# How long a racing operation is given to get as far as it can: without the
# per-key claim it finishes within milliseconds; with it, it waits for the commit.
RACE_WAIT = 0.5


def race_once(
    tg: anyio.abc.TaskGroup, op: Callable[[], Awaitable[object]], outcome: list[BaseException]
) -> Callable[[], Awaitable[None]]:
    """An action for :func:`after_backend` that starts ``op`` once, beside the caller.

    It lets ``op`` run until it finishes (or for :data:`RACE_WAIT`) before the
    backend call returns: ``op`` thus runs between the commit's backend half
    and its record, as far as the snapshotter lets it. ``op``'s error, if any,
    lands in ``outcome``.
    """
    started: list[bool] = []

    async def action() -> None:
        if started:
            return
        started.append(True)
        done = anyio.Event()

        async def run() -> None:
            try:
                await op()
            except Exception as exc:
                outcome.append(exc)
            finally:
                done.set()

        tg.start_soon(run)
        with anyio.move_on_after(RACE_WAIT):
            await done.wait()

    return action


async def test_concurrent_commits_to_one_name_leave_one_committed_and_the_other_active(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the second commit to ``top`` waits for the first, then finds the name taken.

    Both used to pass the is-``top``-free check; the first one to record won,
    and the other, its active snapshot already consumed by the backend, failed
    at the record and left that active record naming a backend snapshot gone.
    """
    await world.snapshots.prepare("a", "work-1")
    await world.snapshots.prepare("a", "work-2")
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        racer = race_once(tg, lambda: world.snapshots.commit("a", "top", "work-2"), outcome)
        calls = after_backend(world, monkeypatch, "commit", racer)
        await world.snapshots.commit("a", "top", "work-1")

    assert len(calls) == 1  # the second commit never reached the backend
    assert len(outcome) == 1 and isinstance(outcome[0], AlreadyExists)
    state = await world.state()
    assert state.snapshots == {("a", "top"), ("a", "work-2")}
    assert (await world.snapshots.stat("a", "work-2")).kind == Kind.ACTIVE
    await assert_consistent(world)


@pytest.mark.parametrize("method", ["prepare", "view"])
async def test_snapshot_whose_key_a_commit_is_naming_waits_and_finds_it_taken(
    world: World, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Regression: a prepare (or view) of ``top`` during a commit to ``top`` comes second.

    It used to record ``top`` between the commit's backend half and its record,
    whose write then failed and left the active ``work`` naming nothing.
    """
    await world.snapshots.prepare("a", "work")
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        racer = race_once(tg, lambda: getattr(world.snapshots, method)("a", "top"), outcome)
        after_backend(world, monkeypatch, "commit", racer)
        await world.snapshots.commit("a", "top", "work")

    assert len(outcome) == 1 and isinstance(outcome[0], AlreadyExists)
    assert (await world.state()).snapshots == {("a", "top")}
    assert (await world.snapshots.stat("a", "top")).kind == Kind.COMMITTED
    await assert_consistent(world)


async def test_commit_whose_name_is_recorded_behind_its_back_drops_both_halves(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record of ``top`` written around the claim: the commit undoes itself, consistently.

    The backend has consumed ``work`` by then, so it cannot be kept: its record
    and the committed backend snapshot both go, and the name's owner stays.
    """
    await world.snapshots.prepare("a", "work")
    await world.native.prepare("other", "")

    async def record_top_directly() -> None:
        def insert(conn: Any) -> None:
            conn.execute(
                "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, kind,"
                " labels, created_at, updated_at) VALUES ('a','native','top','other','',"
                "'active','{}','2026-01-01T00:00:00','2026-01-01T00:00:00')"
            )

        await world.db.write(insert)

    calls = after_backend(world, monkeypatch, "commit", record_top_directly)

    with pytest.raises(AlreadyExists, match="'top'"):
        await world.snapshots.commit("a", "top", "work")

    state = await world.state()
    assert state.snapshots == {("a", "top")}
    assert calls[0] not in state.backend_snapshots
    assert state.backend_snapshots == {"other"}
    await assert_consistent(world)


# -- cleanup against snapshots being made ---------------------------------------------------


async def test_cleanup_leaves_the_backend_snapshot_of_a_prepare_not_yet_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend snapshot made by a prepare still running is not an orphan."""
    calls = after_backend(world, monkeypatch, "prepare", world.snapshots.cleanup)

    await world.snapshots.prepare("a", "work")

    assert len(calls) == 1
    state = await world.state()
    assert state.snapshots == {("a", "work")}
    assert state.backend_snapshots == {calls[0]}
    await assert_consistent(world)


async def test_cleanup_leaves_a_snapshot_recorded_between_its_read_and_its_walk(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: cleanup read the records once, then removed what the walk found beyond them.

    A prepare that completes after that read and before the walk was taken
    for an orphan, and its backend snapshot removed under its record.
    """
    real_walk = world.native.walk
    prepared: list[str] = []

    async def walk(*filters: str) -> list[Info]:
        if not prepared:
            prepared.append("work")
            await world.snapshots.prepare("a", "work")
        return await real_walk(*filters)

    monkeypatch.setattr(world.native, "walk", walk)

    await world.snapshots.cleanup()

    assert prepared
    assert (await world.state()).snapshots == {("a", "work")}
    await assert_consistent(world)


async def test_cleanup_removes_backend_snapshots_no_record_names_children_first(
    world: World,
) -> None:
    """Orphans (a crash between backend and record) go, a chain of them included."""
    await commit_layer(world, "a", "kept")
    await world.native.prepare("orphan-extract", "")
    await world.native.commit("orphan-base", "orphan-extract")
    await world.native.view("orphan-view", "orphan-base")

    await world.snapshots.cleanup()

    state = await world.state()
    assert state.snapshots == {("a", "kept")}
    assert state.backend_snapshots == state.recorded_backend_keys
    assert {i.kind for i in await world.native.walk()} == {Kind.COMMITTED}
