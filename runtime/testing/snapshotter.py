"""Conformance suite for snapshotter backends (a pytest plugin).

Every backend of :class:`runtime.plugins.snapshots.api.Snapshotter` must pass
it, ours included: it checks the contract's rules, and then that the mounts it
returns really behave like layered filesystems. Usage in a backend's tests::

    import pytest
    from runtime.testing.snapshotter import SnapshotterConformance

    pytest_plugins = ["runtime.testing.snapshotter"]

    @pytest.fixture
    async def snapshotter(tmp_path):
        sn = MySnapshotter(tmp_path / "root")
        yield sn
        await sn.close()

    class TestMySnapshotter(SnapshotterConformance):
        pass

Requirements on the ``snapshotter`` fixture: a fresh, empty snapshotter per
test; its teardown may only ``close()`` it (one test closes it already).

The tests mount for real, so they need root (``CAP_SYS_ADMIN``, ``CAP_CHOWN``,
``CAP_MKNOD``): skip or fail in the fixture when that is missing. Mounts go
through :mod:`runtime.pkg.mount` and are always undone. The
suite runs on asyncio; it defines ``anyio_backend`` itself, so it needs no
conftest of the project under test.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.plugins.snapshots.api import Kind, Mount, Snapshotter
from runtime.testing.snapshot_layers import (
    SnapshotterLayerConformance,
    make_layer,
    mount_on,
    names_of,
    write_files,
)

__all__ = ["SnapshotterConformance"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``root`` marker, so projects with ``--strict-markers`` can load us."""
    config.addinivalue_line("markers", "root: needs root (mounts, runc, namespaces)")


@pytest.mark.root
class SnapshotterConformance(SnapshotterLayerConformance):
    """The conformance tests; subclass it in a module that defines ``snapshotter``."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Run the suite on asyncio, whatever the project's conftest says."""
        return "asyncio"

    # -- the contract's bookkeeping rules ------------------------------------

    async def test_prepare_creates_an_active_snapshot(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """A prepared snapshot is active, parentless, labelled, and mounts writable."""
        mounts = await snapshotter.prepare("work", labels={"purpose": "test"})
        assert mounts and all(isinstance(m, Mount) for m in mounts)
        info = await snapshotter.stat("work")
        assert (info.kind, info.name, info.parent) == (Kind.ACTIVE, "work", "")
        assert info.labels == {"purpose": "test"}
        assert isinstance(info.created_at, datetime) and info.created_at.tzinfo is not None
        assert info.updated_at >= info.created_at
        async with mount_on(mounts, tmp_path) as root:
            assert os.listdir(root) == []
            (root / "hello").write_text("hi")
            assert (root / "hello").read_text() == "hi"

    async def test_commit_turns_the_key_into_a_committed_name(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Commit keeps the parent, replaces the labels and removes the key."""
        await make_layer(snapshotter, tmp_path, "base", change=write_files({"a": "1"}))
        await snapshotter.prepare("top-active", "base", labels={"old": "x"})
        await snapshotter.commit("top", "top-active", labels={"new": "y"})
        info = await snapshotter.stat("top")
        assert (info.kind, info.name, info.parent) == (Kind.COMMITTED, "top", "base")
        assert info.labels == {"new": "y"}
        with pytest.raises(NotFound):
            await snapshotter.stat("top-active")
        assert names_of(await snapshotter.walk()) == {"base", "top"}

    async def test_update_replaces_labels(self, snapshotter: Snapshotter) -> None:
        """Update replaces the whole label set and moves ``updated_at``."""
        await snapshotter.prepare("work", labels={"a": "1", "b": "2"})
        before = await snapshotter.stat("work")
        after = await snapshotter.update("work", {"c": "3"})
        assert after.labels == {"c": "3"}
        assert after.updated_at >= before.updated_at
        assert after.created_at == before.created_at
        assert (await snapshotter.stat("work")).labels == {"c": "3"}
        assert (await snapshotter.update("work", {})).labels == {}

    async def test_keys_and_names_share_one_space(self, snapshotter: Snapshotter) -> None:
        """Any existing key or name makes prepare, view and commit raise AlreadyExists."""
        await snapshotter.prepare("a")
        await snapshotter.commit("c", "a")
        await snapshotter.prepare("b")
        await snapshotter.view("v")
        for taken in ("b", "c", "v"):
            with pytest.raises(AlreadyExists):
                await snapshotter.prepare(taken)
            with pytest.raises(AlreadyExists):
                await snapshotter.view(taken, "c")
        await snapshotter.prepare("b2")
        for taken in ("b", "c", "v"):
            with pytest.raises(AlreadyExists):
                await snapshotter.commit(taken, "b2")
        # Failed calls change nothing.
        assert (await snapshotter.stat("b2")).kind is Kind.ACTIVE
        assert names_of(await snapshotter.walk()) == {"b", "b2", "c", "v"}

    async def test_parent_must_exist_and_be_committed(self, snapshotter: Snapshotter) -> None:
        """Active and view snapshots are never parents; unknown parents are NotFound."""
        await snapshotter.prepare("active")
        await snapshotter.view("view")
        for parent in ("active", "view"):
            with pytest.raises(InvalidArgument):
                await snapshotter.prepare("child", parent)
            with pytest.raises(InvalidArgument):
                await snapshotter.view("child", parent)
        with pytest.raises(NotFound):
            await snapshotter.prepare("child", "missing")
        with pytest.raises(NotFound):
            await snapshotter.view("child", "missing")
        with pytest.raises(NotFound):
            await snapshotter.stat("child")

    async def test_only_an_active_snapshot_can_be_committed(self, snapshotter: Snapshotter) -> None:
        """Committing a view or a committed snapshot is FailedPrecondition."""
        await snapshotter.prepare("a")
        await snapshotter.commit("base", "a")
        await snapshotter.view("v", "base")
        with pytest.raises(FailedPrecondition):
            await snapshotter.commit("from-view", "v")
        with pytest.raises(FailedPrecondition):
            await snapshotter.commit("from-committed", "base")
        with pytest.raises(NotFound):
            await snapshotter.commit("from-nothing", "missing")
        assert (await snapshotter.stat("v")).kind is Kind.VIEW

    async def test_remove_refuses_snapshots_with_children(self, snapshotter: Snapshotter) -> None:
        """A parent goes only after its children, views included."""
        await snapshotter.prepare("a")
        await snapshotter.commit("base", "a")
        await snapshotter.prepare("b", "base")
        await snapshotter.commit("mid", "b")
        await snapshotter.prepare("child", "mid")
        await snapshotter.view("look", "base")
        for parent in ("base", "mid"):
            with pytest.raises(FailedPrecondition):
                await snapshotter.remove(parent)
        await snapshotter.remove("child")
        await snapshotter.remove("mid")
        with pytest.raises(FailedPrecondition):
            await snapshotter.remove("base")
        await snapshotter.remove("look")
        await snapshotter.remove("base")
        assert await snapshotter.walk() == []
        with pytest.raises(NotFound):
            await snapshotter.remove("base")

    async def test_unknown_keys_are_not_found(self, snapshotter: Snapshotter) -> None:
        """Every call naming a missing snapshot raises NotFound."""
        with pytest.raises(NotFound):
            await snapshotter.stat("missing")
        with pytest.raises(NotFound):
            await snapshotter.update("missing", {"a": "b"})
        with pytest.raises(NotFound):
            await snapshotter.usage("missing")
        with pytest.raises(NotFound):
            await snapshotter.mounts("missing")
        with pytest.raises(NotFound):
            await snapshotter.remove("missing")
        with pytest.raises(NotFound):
            await snapshotter.commit("name", "missing")

    async def test_empty_key_is_invalid(self, snapshotter: Snapshotter) -> None:
        """An empty key or name is InvalidArgument, not a snapshot."""
        with pytest.raises(InvalidArgument):
            await snapshotter.prepare("")
        with pytest.raises(InvalidArgument):
            await snapshotter.view("")
        await snapshotter.prepare("a")
        with pytest.raises(InvalidArgument):
            await snapshotter.commit("", "a")

    async def test_mounts_repeat_what_prepare_and_view_returned(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """``mounts`` is stable; a committed snapshot has none (FailedPrecondition)."""
        await make_layer(snapshotter, tmp_path, "l1", change=write_files({"1": "1"}))
        await make_layer(snapshotter, tmp_path, "l2", "l1", change=write_files({"2": "2"}))
        expected = {
            "root-active": await snapshotter.prepare("root-active"),
            "active": await snapshotter.prepare("active", "l2"),
            "view-empty": await snapshotter.view("view-empty"),
            "view-one": await snapshotter.view("view-one", "l1"),
            "view-two": await snapshotter.view("view-two", "l2"),
        }
        for key, mounts in expected.items():
            assert await snapshotter.mounts(key) == mounts, key
        with pytest.raises(FailedPrecondition):
            await snapshotter.mounts("l1")

    async def test_walk_filters(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        """Walk filters on kind, name, parent and labels; strings are OR-ed."""
        await make_layer(snapshotter, tmp_path, "base", labels={"tier": "base"})
        await make_layer(snapshotter, tmp_path, "top", "base")
        ref = {"tier": "work", "containerd.io/snapshot.ref": "sha256:abc"}
        await snapshotter.prepare("work", "top", labels=ref)
        await snapshotter.view("look", "base")

        async def names(*filters: str) -> set[str]:
            return names_of(await snapshotter.walk(*filters))

        assert await names() == {"base", "top", "work", "look"}
        assert await names("kind==committed") == {"base", "top"}
        assert await names("kind==active") == {"work"}
        assert await names("kind==view") == {"look"}
        assert await names("name==top") == {"top"}
        assert await names("parent==base") == {"top", "look"}
        assert await names('labels."tier"==work') == {"work"}
        assert await names("labels.tier") == {"base", "work"}
        assert await names('labels."containerd.io/snapshot.ref"') == {"work"}
        assert await names("kind==committed,labels.tier==base") == {"base"}
        assert await names("kind!=committed") == {"work", "look"}
        assert await names("name==base", "name==work") == {"base", "work"}
        assert await names("name==nothing") == set()
        infos = {i.name: i for i in await snapshotter.walk()}
        assert infos["work"].labels == ref
        assert infos["work"].parent == "top"
        with pytest.raises(InvalidArgument):
            await snapshotter.walk("kind==")

    async def test_close_is_idempotent(self, snapshotter: Snapshotter) -> None:
        """Closing twice is harmless (the fixture closes a third time)."""
        await snapshotter.prepare("a")
        await snapshotter.close()
        await snapshotter.close()
