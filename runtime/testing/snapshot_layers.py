"""Conformance of a snapshotter's mounts: they must behave like layered filesystems.

Part of :class:`runtime.testing.snapshotter.SnapshotterConformance`; the layer
helpers here (mount, make a layer) serve the whole suite.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from runtime.pkg.mount import mounted
from runtime.plugins.snapshots.api import Info, Kind, Mount, Snapshotter

__all__ = ["SnapshotterLayerConformance"]


@asynccontextmanager
async def mount_on(mounts: Sequence[Mount], scratch: Path) -> AsyncIterator[Path]:
    """Mount on a fresh directory under ``scratch``; always unmounted on exit."""
    target = Path(tempfile.mkdtemp(prefix="mnt-", dir=scratch))
    async with mounted(mounts, target) as root:
        yield root


async def make_layer(
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
        async with mount_on(mounts, scratch) as root:
            await anyio.to_thread.run_sync(change, root)
    await sn.commit(name, key, labels)
    return name


def write_files(files: dict[str, str]) -> Callable[[Path], None]:
    """A ``change`` that writes text files, creating their directories."""

    def change(root: Path) -> None:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)

    return change


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def names_of(infos: Sequence[Info]) -> set[str]:
    return {i.name for i in infos}



class SnapshotterLayerConformance:
    """The tests of what the mounts hold; mixed into the conformance suite."""

    # -- the mounts behave like layers -----------------------------------------

    async def test_files_flow_through_layers(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """A child sees its parents' files; its changes reach only its own children."""
        await make_layer(
            snapshotter, tmp_path, "l1", change=write_files({"etc/name": "one", "a": "a"})
        )
        await make_layer(snapshotter, tmp_path, "l2", "l1", change=write_files({"etc/name": "two"}))
        sibling = await snapshotter.prepare("sibling", "l1")
        child = await snapshotter.prepare("child", "l2")
        async with mount_on(child, tmp_path) as root, mount_on(sibling, tmp_path) as other:
            assert (root / "etc/name").read_text() == "two"
            assert (root / "a").read_text() == "a"
            (root / "a").write_text("changed")
            (root / "new").write_text("new")
            assert (other / "etc/name").read_text() == "one"
            assert (other / "a").read_text() == "a"
            assert not (other / "new").exists()
        await snapshotter.commit("l3", "child")
        async with mount_on(await snapshotter.view("v3", "l3"), tmp_path) as root:
            assert (root / "a").read_text() == "changed"
            assert (root / "new").read_text() == "new"
            assert (root / "etc/name").read_text() == "two"
        async with mount_on(await snapshotter.view("v1", "l1"), tmp_path) as root:
            assert (root / "a").read_text() == "a"
            assert not (root / "new").exists()

    async def test_views_are_read_only(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        """Views of zero, one and several parents show the tree and refuse writes."""
        await make_layer(snapshotter, tmp_path, "l1", change=write_files({"one": "1"}))
        await make_layer(snapshotter, tmp_path, "l2", "l1", change=write_files({"two": "2"}))
        cases = {"empty": ("", set()), "one": ("l1", {"one"}), "two": ("l2", {"one", "two"})}
        for key, (parent, files) in cases.items():
            mounts = await snapshotter.view(key, parent)
            assert (await snapshotter.stat(key)).kind is Kind.VIEW
            async with mount_on(mounts, tmp_path) as root:
                assert set(os.listdir(root)) == files, key
                with pytest.raises(OSError) as caught:
                    (root / "new").write_text("x")
                assert caught.value.errno == errno.EROFS, key

    async def test_whiteouts_hide_deleted_lower_files(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """Deleting a lower file or replacing a lower directory sticks in children."""
        await make_layer(
            snapshotter, tmp_path, "base",
            change=write_files({"gone": "x", "kept": "y", "dir/a": "a", "dir/b": "b"}),
        )  # fmt: skip

        def delete(root: Path) -> None:
            (root / "gone").unlink()
            for name in ("a", "b"):
                (root / "dir" / name).unlink()
            (root / "dir").rmdir()
            (root / "dir").mkdir()  # a new directory: opaque over the old one
            (root / "dir" / "c").write_text("c")

        await make_layer(snapshotter, tmp_path, "deleted", "base", change=delete)
        async with mount_on(await snapshotter.prepare("child", "deleted"), tmp_path) as root:
            assert sorted(os.listdir(root)) == ["dir", "kept"]
            assert os.listdir(root / "dir") == ["c"]
        async with mount_on(await snapshotter.view("old", "base"), tmp_path) as root:
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

        await make_layer(snapshotter, tmp_path, "base", change=create)
        async with mount_on(await snapshotter.prepare("child", "base"), tmp_path) as root:
            check(root, expected)
            # Changing a lower file's owner and mode copies it up; that must stick too.
            os.chown(root / "sgid", 99, 98)
            os.chmod(root / "sgid", 0o6711)
        await snapshotter.commit("changed", "child")
        async with mount_on(await snapshotter.view("look", "changed"), tmp_path) as root:
            check(root, {**expected, "sgid": (0o6711, 99, 98)})

    async def test_root_directory_ownership_and_mode_are_inherited(
        self, snapshotter: Snapshotter, tmp_path: Path
    ) -> None:
        """A fresh root is 0755 root:root; a changed root carries over to children."""
        mounts = await snapshotter.prepare("a")
        async with mount_on(mounts, tmp_path) as root:
            st = root.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
            os.chown(root, 10, 20)
            os.chmod(root, 0o700)
        await snapshotter.commit("base", "a")
        for key, make in (("prepared", snapshotter.prepare), ("viewed", snapshotter.view)):
            async with mount_on(await make(key, "base"), tmp_path) as root:
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

        await make_layer(snapshotter, tmp_path, "base", change=create)
        async with mount_on(await snapshotter.view("look", "base"), tmp_path) as root:
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
        async with mount_on(mounts, tmp_path) as root:
            (root / "big").write_bytes(os.urandom(1 << 20))
            (root / "dir").mkdir()
            (root / "dir" / "small").write_bytes(b"x" * 100)
            fsync_path(root / "big")  # so that delayed allocation shows in st_blocks
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
        async with mount_on(mounts, tmp_path) as root:
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
            parent = await make_layer(
                snapshotter, tmp_path, f"layer-{i:03}", parent,
                change=write_files({f"layer-{i:03}": str(i), "latest": str(i)}),
            )  # fmt: skip
        async with mount_on(await snapshotter.prepare("top", parent), tmp_path) as root:
            assert (root / "layer-000").read_text() == "0"
            assert (root / "layer-127").read_text() == "127"
            assert (root / "latest").read_text() == "127"
            assert len(os.listdir(root)) == 129
            (root / "written").write_text("ok")
        async with mount_on(await snapshotter.view("look", parent), tmp_path) as root:
            assert (root / "layer-000").read_text() == "0"
            assert (root / "latest").read_text() == "127"

    async def test_concurrent_prepares(self, snapshotter: Snapshotter, tmp_path: Path) -> None:
        """Twenty prepares, mounts and commits at once stay separate and complete."""
        await make_layer(snapshotter, tmp_path, "base", change=write_files({"shared": "base"}))
        results: dict[int, list[Mount]] = {}

        async def prepare(i: int) -> None:
            results[i] = await snapshotter.prepare(f"work-{i}", "base", labels={"n": str(i)})

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(prepare, i)
        assert len(await snapshotter.walk("kind==active")) == 20

        async def use_and_commit(i: int) -> None:
            async with mount_on(results[i], tmp_path) as root:
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
        await make_layer(snapshotter, tmp_path, "base", change=write_files({"f": "base"}))
        await make_layer(snapshotter, tmp_path, "doomed", "base", change=write_files({"g": "x"}))
        await snapshotter.prepare("active", "base")
        await snapshotter.remove("doomed")
        await snapshotter.cleanup()
        await snapshotter.cleanup()
        assert names_of(await snapshotter.walk()) == {"base", "active"}
        async with mount_on(await snapshotter.mounts("active"), tmp_path) as root:
            assert (root / "f").read_text() == "base"
            assert not (root / "g").exists()
