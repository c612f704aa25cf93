"""The namespaced snapshotter: sharing a committed layer across namespaces under collection.

A ``prepare`` labelled ``containerd.io/snapshot.ref=<name>`` adopts a committed
backend snapshot another namespace recorded. The backend is asked about the
layer outside any transaction, so a garbage collection can run between that
question and the record of the adoption; these tests put one exactly there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from runtime.core.errors import AlreadyExists
from runtime.plugins.gc.api import LABEL_ROOT
from runtime.plugins.snapshots.api import Info
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


async def assert_every_record_has_its_layer(world: World) -> None:
    state = await world.state()
    assert state.recorded_backend_keys <= state.backend_snapshots


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

    with contextlib.suppress(AlreadyExists):
        await world.snapshots.prepare("b", "extract-top", "base", {SNAPSHOT_REF_LABEL: "top"})

    state = await world.state()
    assert ("b", "top") not in state.snapshots
    assert ("b", "base") not in state.snapshots
    await assert_every_record_has_its_layer(world)
