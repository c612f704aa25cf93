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

import errno
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg.mount import mounted
from runtime.plugins.snapshots.api import Info, Kind, Mount, Snapshotter

__all__ = ["SnapshotterConformance"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``root`` marker, so projects with ``--strict-markers`` can load us."""
    config.addinivalue_line("markers", "root: needs root (mounts, runc, namespaces)")


@asynccontextmanager
async def _mount(mounts: Sequence[Mount], scratch: Path) -> AsyncIterator[Path]:
    """Mount on a fresh directory under ``scratch``; always unmounted on exit."""
    target = Path(tempfile.mkdtemp(prefix="mnt-", dir=scratch))
    async with mounted(mounts, target) as root:
        yield root


async def _layer(
    sn: Snapshotter,
    scratch: Path,
    name: str,
    parent: str = "",
    change: Callable[[Path], object] | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """Prepare on ``parent``, apply ``change`` through the mount, commit as ``name``."""
    key = f"{name}-active"
    mounts = await sn.prepare(key, parent)
    if change is not None:
        async with _mount(mounts, scratch) as root:
            await anyio.to_thread.run_sync(change, root)
    await sn.commit(name, key, labels)
    return name


def _write(files: dict[str, str]) -> Callable[[Path], None]:
    """A ``change`` that writes text files, creating their directories."""

    def change(root: Path) -> None:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)

    return change


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _names(infos: Sequence[Info]) -> set[str]:
    return {i.name for i in infos}


@pytest.mark.root
class SnapshotterConformance:
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
        async with _mount(mounts, tmp_path) as root:
            assert os.listdir(root) == []
            (root / "hello").write_text("hi")
            assert (root / "hello").read_text() == "hi"

    async def test_commit_turns_the_key_into_a_committed_name(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Commit keeps the parent, replaces the labels and removes the key."""
        await _layer(snapshotter, tmp_path, "base", change=_write({"a": "1"}))
        await snapshotter.prepare("top-active", "base", labels={"old": "x"})
        await snapshotter.commit("top", "top-active", labels={"new": "y"})
        info = await snapshotter.stat("top")
        assert (info.kind, info.name, info.parent) == (Kind.COMMITTED, "top", "base")
        assert info.labels == {"new": "y"}
        with pytest.raises(NotFound):
            await snapshotter.stat("top-active")
        assert _names(await snapshotter.walk()) == {"base", "top"}

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
        assert _names(await snapshotter.walk()) == {"b", "b2", "c", "v"}

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
        await _layer(snapshotter, tmp_path, "l1", change=_write({"1": "1"}))
        await _layer(snapshotter, tmp_path, "l2", "l1", change=_write({"2": "2"}))
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
        await _layer(snapshotter, tmp_path, "base", labels={"tier": "base"})
        await _layer(snapshotter, tmp_path, "top", "base")
        ref = {"tier": "work", "containerd.io/snapshot.ref": "sha256:abc"}
        await snapshotter.prepare("work", "top", labels=ref)
        await snapshotter.view("look", "base")

        async def names(*filters: str) -> set[str]:
            return _names(await snapshotter.walk(*filters))

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

    # -- the mounts behave like layers -----------------------------------------

    async def test_files_flow_through_layers(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """A child sees its parents' files; its changes reach only its own children."""
        await _layer(snapshotter, tmp_path, "l1", change=_write({"etc/name": "one", "a": "a"}))
        await _layer(snapshotter, tmp_path, "l2", "l1", change=_write({"etc/name": "two"}))
        sibling = await snapshotter.prepare("sibling", "l1")
        child = await snapshotter.prepare("child", "l2")
        async with _mount(child, tmp_path) as root, _mount(sibling, tmp_path) as other:
            assert (root / "etc/name").read_text() == "two"
            assert (root / "a").read_text() == "a"
            (root / "a").write_text("changed")
            (root / "new").write_text("new")
            assert (other / "etc/name").read_text() == "one"
            assert (other / "a").read_text() == "a"
            assert not (other / "new").exists()
        await snapshotter.commit("l3", "child")
        async with _mount(await snapshotter.view("v3", "l3"), tmp_path) as root:
            assert (root / "a").read_text() == "changed"
            assert (root / "new").read_text() == "new"
            assert (root / "etc/name").read_text() == "two"
        async with _mount(await snapshotter.view("v1", "l1"), tmp_path) as root:
            assert (root / "a").read_text() == "a"
            assert not (root / "new").exists()

    async def test_views_are_read_only(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        """Views of zero, one and several parents show the tree and refuse writes."""
        await _layer(snapshotter, tmp_path, "l1", change=_write({"one": "1"}))
        await _layer(snapshotter, tmp_path, "l2", "l1", change=_write({"two": "2"}))
        cases = {"empty": ("", set()), "one": ("l1", {"one"}), "two": ("l2", {"one", "two"})}
        for key, (parent, files) in cases.items():
            mounts = await snapshotter.view(key, parent)
            assert (await snapshotter.stat(key)).kind is Kind.VIEW
            async with _mount(mounts, tmp_path) as root:
                assert set(os.listdir(root)) == files, key
                with pytest.raises(OSError) as caught:
                    (root / "new").write_text("x")
                assert caught.value.errno == errno.EROFS, key

    async def test_whiteouts_hide_deleted_lower_files(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Deleting a lower file or replacing a lower directory sticks in children."""
        await _layer(
            snapshotter, tmp_path, "base",
            change=_write({"gone": "x", "kept": "y", "dir/a": "a", "dir/b": "b"}),
        )  # fmt: skip

        def delete(root: Path) -> None:
            (root / "gone").unlink()
            for name in ("a", "b"):
                (root / "dir" / name).unlink()
            (root / "dir").rmdir()
            (root / "dir").mkdir()  # a new directory: opaque over the old one
            (root / "dir" / "c").write_text("c")

        await _layer(snapshotter, tmp_path, "deleted", "base", change=delete)
        async with _mount(await snapshotter.prepare("child", "deleted"), tmp_path) as root:
            assert sorted(os.listdir(root)) == ["dir", "kept"]
            assert os.listdir(root / "dir") == ["c"]
        async with _mount(await snapshotter.view("old", "base"), tmp_path) as root:
            assert sorted(os.listdir(root)) == ["dir", "gone", "kept"]
            assert sorted(os.listdir(root / "dir")) == ["a", "b"]

    async def test_ownership_and_modes_survive_commit(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Ownership and modes (setuid, setgid, sticky) set through a mount reach children."""

        def create(root: Path) -> None:
            (root / "suid").write_text("#!/bin/sh\n")
            os.chown(root / "suid", 1234, 5678)
            os.chmod(root / "suid", 0o4755)  # after chown, which clears setuid
            (root / "sgid").write_text("")
            os.chown(root / "sgid", 0, 42)
            os.chmod(root / "sgid", 0o2750)
            (root / "tmp").mkdir()
            os.chmod(root / "tmp", 0o1777)
            (root / "private").mkdir()
            os.chown(root / "private", 1000, 1000)
            os.chmod(root / "private", 0o700)
            os.symlink("suid", root / "link")
            os.lchown(root / "link", 7, 8)

        expected = {
            "suid": (0o4755, 1234, 5678),
            "sgid": (0o2750, 0, 42),
            "tmp": (0o1777, 0, 0),
            "private": (0o700, 1000, 1000),
        }

        def check(root: Path, expected: dict[str, tuple[int, int, int]]) -> None:
            for name, (mode, uid, gid) in expected.items():
                st = (root / name).lstat()
                assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), name
            link = (root / "link").lstat()
            assert (link.st_uid, link.st_gid) == (7, 8)
            assert os.readlink(root / "link") == "suid"

        await _layer(snapshotter, tmp_path, "base", change=create)
        async with _mount(await snapshotter.prepare("child", "base"), tmp_path) as root:
            check(root, expected)
            # Changing a lower file's owner and mode copies it up; that must stick too.
            os.chown(root / "sgid", 99, 98)
            os.chmod(root / "sgid", 0o6711)
        await snapshotter.commit("changed", "child")
        async with _mount(await snapshotter.view("look", "changed"), tmp_path) as root:
            check(root, {**expected, "sgid": (0o6711, 99, 98)})

    async def test_root_directory_ownership_and_mode_are_inherited(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """A fresh root is 0755 root:root; a changed root carries over to children."""
        mounts = await snapshotter.prepare("a")
        async with _mount(mounts, tmp_path) as root:
            st = root.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
            os.chown(root, 10, 20)
            os.chmod(root, 0o700)
        await snapshotter.commit("base", "a")
        for key, make in (("prepared", snapshotter.prepare), ("viewed", snapshotter.view)):
            async with _mount(await make(key, "base"), tmp_path) as root:
                st = root.stat()
                assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 10, 20)

    async def test_special_files_survive(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        """Hardlinks, symlinks, FIFOs, device nodes and xattrs reach children."""
        xattrs = True

        def create(root: Path) -> None:
            nonlocal xattrs
            (root / "file").write_text("data")
            os.link(root / "file", root / "hardlink")
            os.symlink("/etc/passwd", root / "symlink")
            os.mkfifo(root / "fifo")
            os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            try:
                os.setxattr(root / "file", "user.moorage", b"value")
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                xattrs = False  # the filesystem under the snapshotter lacks user xattrs

        await _layer(snapshotter, tmp_path, "base", change=create)
        async with _mount(await snapshotter.view("look", "base"), tmp_path) as root:
            file, hardlink = (root / "file").lstat(), (root / "hardlink").lstat()
            assert (file.st_ino, file.st_nlink) == (hardlink.st_ino, 2)
            assert (root / "hardlink").read_text() == "data"
            assert os.readlink(root / "symlink") == "/etc/passwd"
            assert stat.S_ISFIFO((root / "fifo").lstat().st_mode)
            null = (root / "null").lstat()
            assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
            if xattrs:
                assert os.getxattr(root / "file", "user.moorage") == b"value"

    async def test_usage_counts_bytes_and_inodes(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Active usage is live, hardlinks count once, commit records the last figure."""
        mounts = await snapshotter.prepare("a")
        empty = await snapshotter.usage("a")
        assert empty.inodes >= 1  # the root directory
        async with _mount(mounts, tmp_path) as root:
            (root / "big").write_bytes(os.urandom(1 << 20))
            (root / "dir").mkdir()
            (root / "dir" / "small").write_bytes(b"x" * 100)
            _fsync(root / "big")  # so that delayed allocation shows in st_blocks
            written = await snapshotter.usage("a")
            os.link(root / "big", root / "dir" / "big-again")
            linked = await snapshotter.usage("a")
        assert written.inodes == empty.inodes + 3
        assert written.size >= empty.size + (1 << 20) + 100
        assert (linked.size, linked.inodes) == (written.size, written.inodes)
        await snapshotter.commit("base", "a")
        assert await snapshotter.usage("base") == linked
        mounts = await snapshotter.prepare("b", "base")
        before = await snapshotter.usage("b")
        async with _mount(mounts, tmp_path) as root:
            (root / "more").write_bytes(os.urandom(64 << 10))
        after = await snapshotter.usage("b")
        assert after.size >= before.size + (64 << 10)
        assert after.inodes == before.inodes + 1

    async def test_chain_of_128_layers_mounts(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """128 layers fit one mount: the bottom and the top layer both show."""
        parent = ""
        for i in range(128):
            parent = await _layer(
                snapshotter, tmp_path, f"layer-{i:03}", parent,
                change=_write({f"layer-{i:03}": str(i), "latest": str(i)}),
            )  # fmt: skip
        async with _mount(await snapshotter.prepare("top", parent), tmp_path) as root:
            assert (root / "layer-000").read_text() == "0"
            assert (root / "layer-127").read_text() == "127"
            assert (root / "latest").read_text() == "127"
            assert len(os.listdir(root)) == 129
            (root / "written").write_text("ok")
        async with _mount(await snapshotter.view("look", parent), tmp_path) as root:
            assert (root / "layer-000").read_text() == "0"
            assert (root / "latest").read_text() == "127"

    async def test_concurrent_prepares(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        """Twenty prepares, mounts and commits at once stay separate and complete."""
        await _layer(snapshotter, tmp_path, "base", change=_write({"shared": "base"}))
        results: dict[int, list[Mount]] = {}

        async def prepare(i: int) -> None:
            results[i] = await snapshotter.prepare(f"work-{i}", "base", labels={"n": str(i)})

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(prepare, i)
        assert len(await snapshotter.walk("kind==active")) == 20

        async def use_and_commit(i: int) -> None:
            async with _mount(results[i], tmp_path) as root:
                assert (root / "shared").read_text() == "base"
                (root / f"own-{i}").write_text(str(i))
                await anyio.sleep(0)  # let the others write meanwhile
                assert sorted(os.listdir(root)) == sorted(["shared", f"own-{i}"])
            await snapshotter.commit(f"done-{i}", f"work-{i}")

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(use_and_commit, i)
        assert len(await snapshotter.walk("kind==committed,parent==base")) == 20
        assert await snapshotter.walk("kind==active") == []

    async def test_cleanup_keeps_live_snapshots(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Cleanup after removals leaves every remaining snapshot intact and mountable."""
        await _layer(snapshotter, tmp_path, "base", change=_write({"f": "base"}))
        await _layer(snapshotter, tmp_path, "doomed", "base", change=_write({"g": "x"}))
        await snapshotter.prepare("active", "base")
        await snapshotter.remove("doomed")
        await snapshotter.cleanup()
        await snapshotter.cleanup()
        assert _names(await snapshotter.walk()) == {"base", "active"}
        async with _mount(await snapshotter.mounts("active"), tmp_path) as root:
            assert (root / "f").read_text() == "base"
            assert not (root / "g").exists()
