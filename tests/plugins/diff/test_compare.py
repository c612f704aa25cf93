"""write_diff and write_diff_from_overlay_upper: the layer between two trees, and back again."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from runtime.core.errors import InvalidArgument
from runtime.plugins.diff.walking.apply import apply_layer
from runtime.plugins.diff.walking.compare import (
    DiffResult,
    write_diff,
    write_diff_from_overlay_upper,
)
from tests.fixtures.system import require_binary, require_root

T0 = 1_600_000_000
MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


# --------------------------------------------------------------------------- helpers


def build_base(root: Path, *, privileged: bool = False) -> Path:
    """A small rootfs with every kind of entry, all dated T0 (whole seconds, like a layer)."""
    files = {
        "bin/tool": (b"#!/bin/sh\n", 0o755),
        "etc/config": (b"key=1\n", 0o644),
        "etc/old": (b"old", 0o644),
        "etc/touched": (b"t", 0o644),
        "etc/xattr-only": (b"x", 0o644),
        "lib/x": (b"x", 0o644),
        "srv/www/index.html": (b"<html>", 0o644),
        "usr/share/doc/readme": (b"doc", 0o644),
        "var/cache/a/b": (b"cache", 0o600),
    }
    for name, (data, mode) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    os.link(root / "bin/tool", root / "bin/tool-alias")
    (root / "lib/libx.so").symlink_to("x")
    if privileged:
        os.mknod(root / "etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(root / "usr/share/doc/readme", 1000, 1000)
    _date_everything(root)
    return root


def _date_everything(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, ns=(T0 * 10**9, T0 * 10**9), follow_symlinks=False)


def mutate(upper: Path) -> None:
    """The changes a container might make, each a different kind of difference."""
    (upper / "etc/config").write_bytes(b"key=2\n")  # same size...
    os.utime(upper / "etc/config", (T0, T0))  # ...and same second: only the bytes differ
    (upper / "bin/tool").chmod(0o700)  # changes bin/tool-alias too (same inode)
    (upper / "etc/old").unlink()
    shutil.rmtree(upper / "var/cache")
    (upper / "new/dir").mkdir(parents=True)
    (upper / "new/dir/file").write_bytes(b"new")
    (upper / "lib/x").unlink()
    (upper / "lib/x").mkdir()
    (upper / "lib/x/inside").write_bytes(b"i")
    shutil.rmtree(upper / "srv")
    (upper / "srv").symlink_to("var")
    os.utime(upper / "etc/touched", (T0 + 60, T0 + 60))
    os.setxattr(upper / "etc/xattr-only", "user.note", b"\x00\xffbinary")


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What a layer must reproduce: type, mode, owner, mtime (seconds), data, xattrs, links."""
    out: dict[str, tuple[object, ...]] = {}
    leaders: dict[tuple[int, int], str] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISREG(st.st_mode):
            payload: object = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            payload = os.readlink(path)
        else:
            payload = st.st_rdev
        xattrs = {
            k: os.getxattr(path, k, follow_symlinks=False)
            for k in os.listxattr(path, follow_symlinks=False)
            if not k.startswith("trusted.overlay.")
        }
        # Hardlink groups, named by their first path (a directory's link count is not that).
        linked = st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode)
        leader = leaders.setdefault((st.st_dev, st.st_ino), rel) if linked else None
        mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns // 10**9
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, payload, xattrs, leader)
    return out


def diff(lower: Path, upper: Path, compression: str = "gzip") -> tuple[bytes, DiffResult]:
    out = io.BytesIO()
    result = write_diff(lower, upper, out, compression=compression)
    return out.getvalue(), result


def members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        return tf.getmembers()


# --------------------------------------------------------------------------- write_diff


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compare_round_trip_gives_same_tree(tmp_path: Path, compression: str) -> None:
    lower = build_base(tmp_path / "lower")
    upper = build_base(tmp_path / "upper")
    mutate(upper)
    blob, result = diff(lower, upper, compression)
    work = build_base(tmp_path / "work")
    applied = apply_layer(io.BytesIO(blob), work, media_type=result.media_type)
    assert applied.diff_id == result.diff_id
    assert tree(work) == tree(upper)


def test_compare_lists_changes_depth_first_with_parents_and_whiteouts(tmp_path: Path) -> None:
    lower = build_base(tmp_path / "lower")
    upper = build_base(tmp_path / "upper")
    mutate(upper)
    blob, _ = diff(lower, upper)
    assert [m.name for m in members(blob)] == [
        "bin",  # unchanged itself, but a parent of changes
        "bin/tool",
        "bin/tool-alias",
        "etc",
        "etc/config",
        "etc/.wh.old",
        "etc/touched",
        "etc/xattr-only",
        "lib",
        "lib/x",
        "lib/x/inside",
        "new",
        "new/dir",
        "new/dir/file",
        "srv",
        "var",
        "var/.wh.cache",
    ]


def test_compare_writes_whiteouts_as_empty_files_at_the_epoch(tmp_path: Path) -> None:
    lower = build_base(tmp_path / "lower")
    upper = build_base(tmp_path / "upper")
    (upper / "etc/old").unlink()
    [parent, wh] = members(diff(lower, upper)[0])
    etc_mtime = (upper / "etc").stat().st_mtime_ns // 10**9
    assert (parent.name, parent.isdir(), parent.mtime) == ("etc", True, etc_mtime)
    assert (wh.name, wh.isreg(), wh.size, wh.mtime, wh.mode) == ("etc/.wh.old", True, 0, 0, 0)


def test_compare_writes_a_hardlinked_inode_once(tmp_path: Path) -> None:
    lower = build_base(tmp_path / "lower")
    upper = build_base(tmp_path / "upper")
    (upper / "bin/tool").write_bytes(b"#!/bin/bash\n")
    tool, alias = [m for m in members(diff(lower, upper)[0]) if m.name.startswith("bin/")]
    assert (tool.name, tool.isreg(), tool.size) == ("bin/tool", True, 12)
    assert (alias.name, alias.islnk(), alias.linkname) == ("bin/tool-alias", True, "bin/tool")


def test_compare_of_identical_trees_is_an_empty_layer(tmp_path: Path) -> None:
    blob, result = diff(build_base(tmp_path / "a"), build_base(tmp_path / "b"), "none")
    assert blob == b"\0" * len(blob)  # just the end-of-archive blocks
    assert result.diff_id == result.digest


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compare_result_describes_the_blob(tmp_path: Path, compression: str) -> None:
    lower = build_base(tmp_path / "lower")
    upper = build_base(tmp_path / "upper")
    mutate(upper)
    blob, result = diff(lower, upper, compression)
    if compression == "gzip":
        tar = gzip.decompress(blob)
    elif compression == "zstd":
        tar = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    else:
        tar = blob
    assert result == DiffResult(
        diff_id=f"sha256:{hashlib.sha256(tar).hexdigest()}",
        digest=f"sha256:{hashlib.sha256(blob).hexdigest()}",
        size=len(blob),
        media_type=MEDIA[compression],
    )
    # Same trees, same bytes: the layer is reproducible.
    assert diff(lower, upper, compression)[1] == result


def test_compare_rejects_unknown_compression_and_missing_trees(tmp_path: Path) -> None:
    base = build_base(tmp_path / "base")
    with pytest.raises(InvalidArgument, match="unknown layer compression 'lz4'"):
        write_diff(base, base, io.BytesIO(), compression="lz4")
    with pytest.raises(InvalidArgument, match="is not a directory"):
        write_diff(tmp_path / "missing", base, io.BytesIO())


@pytest.mark.root
def test_compare_round_trip_keeps_ownership_setuid_and_devices(tmp_path: Path) -> None:
    require_root()
    lower = build_base(tmp_path / "lower", privileged=True)
    upper = build_base(tmp_path / "upper", privileged=True)
    os.chown(upper / "bin/tool", 0, 50)
    (upper / "bin/tool").chmod(0o4755)
    os.chown(upper / "etc/config", 1000, 1000)  # ownership alone
    os.mknod(upper / "etc/tty", stat.S_IFCHR | 0o620, os.makedev(5, 0))
    os.mkfifo(upper / "etc/fifo", 0o600)
    os.setxattr(upper / "lib/x", "security.capability", b"\x01\x00\x00\x02" + b"\0" * 16)
    blob, result = diff(lower, upper)
    names = [m.name for m in members(blob)]
    assert names == ["bin", "bin/tool", "bin/tool-alias", "etc", "etc/config", "etc/fifo",
                     "etc/tty", "lib", "lib/x"]  # fmt: skip
    work = build_base(tmp_path / "work", privileged=True)
    apply_layer(io.BytesIO(blob), work, media_type=result.media_type)
    assert tree(work) == tree(upper)


# --------------------------------------------------------------------------- overlay upperdir


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown, whatever the test did."""
    mounted: list[Path] = []
    yield mounted
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=False)


def _mount_overlay(mounts: list[Path], target: Path, options: str) -> None:
    target.mkdir(exist_ok=True)
    subprocess.run(
        [require_binary("mount"), "-t", "overlay", "overlay", "-o", options, str(target)],
        check=True,
    )
    mounts.append(target)


def _umount(mounts: list[Path], target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True)
    mounts.remove(target)


@pytest.mark.root
def test_compare_from_overlay_upper_reproduces_the_merged_view(
    tmp_path: Path, mounts: list[Path]
) -> None:
    """Changes made through an overlay mount, read from its upperdir, apply to the same tree.

    Applied both generically (onto a copy of the lower) and as a new upperdir stacked over the
    lower, the layer gives back exactly what the container saw.
    """
    require_root()
    lower = build_base(tmp_path / "lower")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    upper.mkdir()
    work.mkdir()
    _mount_overlay(mounts, merged, f"lowerdir={lower},upperdir={upper},workdir={work}")
    (merged / "etc/old").unlink()  # whiteout
    shutil.rmtree(merged / "srv/www")  # whiteout of a directory
    shutil.rmtree(merged / "var/cache")
    (merged / "var/cache").mkdir()  # recreated: overlayfs makes it opaque
    (merged / "var/cache/fresh").write_bytes(b"f")
    (merged / "etc/config").write_bytes(b"key=3\n")  # copy-up
    (merged / "new").mkdir()
    (merged / "new/ephemeral").write_bytes(b"e")
    (merged / "new/ephemeral").unlink()  # whiteout of nothing: dropped from the layer
    expected = tree(merged)
    _umount(mounts, merged)

    out = io.BytesIO()
    result = write_diff_from_overlay_upper(upper, [lower], out)
    blob = out.getvalue()
    names = [m.name for m in members(blob)]
    assert "var/cache/.wh..wh..opq" in names
    assert "etc/.wh.old" in names and "srv/.wh.www" in names
    assert not any("ephemeral" in n for n in names)

    generic = build_base(tmp_path / "generic")
    apply_layer(io.BytesIO(blob), generic, media_type=result.media_type)
    assert tree(generic) == expected

    upper2 = tmp_path / "upper2"
    upper2.mkdir()
    apply_layer(io.BytesIO(blob), upper2, media_type=result.media_type, overlay_upper=True)
    view = tmp_path / "view"
    _mount_overlay(mounts, view, f"lowerdir={upper2}:{lower}")
    assert tree(view) == expected


@pytest.mark.parametrize("relink", ["first", "second"])
def test_compare_links_unchanged_paths_to_a_rewritten_inode(tmp_path: Path, relink: str) -> None:
    """`ln -f` in either direction: the unchanged name must follow the rewritten inode."""
    lower = build_base(tmp_path / "lower")
    (lower / "etc/a").write_bytes(b"A")
    (lower / "etc/b").write_bytes(b"B")
    _date_everything(lower)
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper, symlinks=True)
    if relink == "first":
        (upper / "etc/a").unlink()
        os.link(upper / "etc/b", upper / "etc/a")  # a changed, b unchanged
    else:
        (upper / "etc/b").unlink()
        os.link(upper / "etc/a", upper / "etc/b")  # b changed, a unchanged
    blob, result = diff(lower, upper)
    work = tmp_path / "work"
    shutil.copytree(lower, work, symlinks=True)
    apply_layer(io.BytesIO(blob), work, media_type=result.media_type)
    assert os.path.samefile(work / "etc/a", work / "etc/b")
    assert tree(work) == tree(upper)
