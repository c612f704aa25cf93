"""apply_layer: OCI changeset semantics, overlay upperdirs, and refusal of hostile layers.

Hostile-layer tests keep a sentinel directory next to the target (``tmp_path/outside``) and
check that it is byte-for-byte, mode-for-mode and mtime-for-mtime untouched afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from runtime.core.errors import InvalidArgument, NotImplementedYet
from runtime.pkg.archive.decode import compression_for
from runtime.plugins.diff.walking.apply import ApplyResult, apply_layer
from tests.fixtures.system import require_binary, require_root

TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
T0 = 1_600_000_000


# --------------------------------------------------------------------------- helpers


@dataclass
class Layer:
    """A layer tar built in memory, entry by entry, in the order given."""

    buf: io.BytesIO = field(default_factory=io.BytesIO)

    def __post_init__(self) -> None:
        self.tar = tarfile.TarFile(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None, /, **attrs: object) -> Layer:
        info.mtime = T0
        for key, value in attrs.items():
            setattr(info, key, value)
        if data is not None:
            info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def file(self, name: str, data: bytes = b"", **attrs: object) -> Layer:
        attrs.setdefault("mode", 0o644)
        return self._add(tarfile.TarInfo(name), data, **attrs)

    def dir(self, name: str, **attrs: object) -> Layer:
        attrs.setdefault("mode", 0o755)
        return self._add(tarfile.TarInfo(name), type=tarfile.DIRTYPE, **attrs)

    def symlink(self, name: str, target: str, **attrs: object) -> Layer:
        return self._add(tarfile.TarInfo(name), type=tarfile.SYMTYPE, linkname=target, **attrs)

    def hardlink(self, name: str, target: str, **attrs: object) -> Layer:
        attrs.setdefault("mode", 0o644)
        return self._add(tarfile.TarInfo(name), type=tarfile.LNKTYPE, linkname=target, **attrs)

    def node(self, name: str, kind: bytes, major: int = 0, minor: int = 0) -> Layer:
        return self._add(
            tarfile.TarInfo(name), type=kind, devmajor=major, devminor=minor, mode=0o600
        )

    def whiteout(self, name: str) -> Layer:
        head, _, base = name.rpartition("/")
        return self._add(tarfile.TarInfo(f"{head}/.wh.{base}" if head else f".wh.{base}"), b"")

    def opaque(self, directory: str) -> Layer:
        return self._add(tarfile.TarInfo(f"{directory}/.wh..wh..opq"), b"")

    def tar_bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()

    def gzip(self) -> bytes:
        return gzip.compress(self.tar_bytes(), mtime=0)


def apply(blob: bytes, target: Path, media_type: str = GZIP, **kw: object) -> ApplyResult:
    target.mkdir(exist_ok=True)
    return apply_layer(io.BytesIO(blob), target, media_type=media_type, **kw)  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything observable about a tree, to prove that it did not change."""
    out: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        link = os.readlink(path) if path.is_symlink() else None
        out[str(path.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            st.st_nlink,
            data,
            link,
        )
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A sentinel tree beside the target; asserted untouched after the test body."""
    out = tmp_path / "outside"
    out.mkdir()
    secret = out / "secret"
    secret.write_bytes(b"keep me")
    secret.chmod(0o640)
    (out / "sub").mkdir()
    os.utime(secret, ns=(T0 * 10**9, T0 * 10**9))
    os.utime(out / "sub", ns=(T0 * 10**9, T0 * 10**9))
    os.utime(out, ns=(T0 * 10**9, T0 * 10**9))
    before = snapshot(out)
    yield out
    assert snapshot(out) == before, "something outside the target changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "target"]


def refuse(blob: bytes, target: Path, *needles: str, media_type: str = GZIP) -> None:
    with pytest.raises(InvalidArgument) as err:
        apply(blob, target, media_type)
    for needle in needles:
        assert needle in str(err.value)


# --------------------------------------------------------------------------- basics


def test_apply_returns_diff_id_and_size_of_the_uncompressed_tar(tmp_path: Path) -> None:
    tar = Layer().dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n").tar_bytes()
    result = apply(gzip.compress(tar), tmp_path / "target")
    assert result == ApplyResult(f"sha256:{hashlib.sha256(tar).hexdigest()}", len(tar))
    assert (tmp_path / "target/etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"


@pytest.mark.parametrize(
    ("media_type", "encode"),
    [
        (TAR, lambda b: b),
        (GZIP, gzip.compress),
        (ZSTD, lambda b: zstandard.ZstdCompressor().compress(b)),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", gzip.compress),
        ("application/vnd.docker.image.rootfs.diff.tar", lambda b: b),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", gzip.compress),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
         lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)  # fmt: skip
def test_apply_decompresses_by_media_type(
    tmp_path: Path, media_type: str, encode: Callable[[bytes], bytes]
) -> None:
    tar = Layer().file("a", b"x" * 100_000).tar_bytes()
    result = apply(encode(tar), tmp_path / "t", media_type)
    assert result.diff_id == f"sha256:{hashlib.sha256(tar).hexdigest()}"
    assert (tmp_path / "t/a").read_bytes() == b"x" * 100_000


def test_apply_unknown_media_type_is_not_implemented(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedYet, match=r"tar\+gzip\+encrypted"):
        apply(b"", tmp_path / "t", "application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    assert compression_for("application/vnd.docker.image.rootfs.diff.tar.zstd") == "zstd"


@pytest.mark.parametrize(
    ("media_type", "blob", "message"),
    [
        (GZIP, Layer().file("a").tar_bytes(), "says gzip but the blob is not gzip"),
        (ZSTD, gzip.compress(b"x"), "says zstd but the blob is not zstd"),
        (TAR, gzip.compress(b"x"), "says uncompressed tar but it is compressed"),
    ],
)
def test_apply_checks_magic_bytes_against_media_type(
    tmp_path: Path, media_type: str, blob: bytes, message: str
) -> None:
    refuse(blob, tmp_path / "t", message, media_type=media_type)


def test_apply_digest_covers_bytes_after_the_end_of_archive(tmp_path: Path) -> None:
    tar = Layer().file("a", b"hi").tar_bytes() + b"\0" * 4096
    result = apply(gzip.compress(tar), tmp_path / "t")
    assert result.size == len(tar)
    assert result.diff_id == f"sha256:{hashlib.sha256(tar).hexdigest()}"


def test_apply_accepts_concatenated_gzip_members(tmp_path: Path) -> None:
    tar = Layer().file("a", b"y" * 5000).file("b", b"z").tar_bytes()
    blob = gzip.compress(tar[:3000]) + gzip.compress(tar[3000:])
    assert apply(blob, tmp_path / "t").size == len(tar)
    assert (tmp_path / "t/b").read_bytes() == b"z"


def test_apply_rejects_truncated_or_corrupt_streams(tmp_path: Path) -> None:
    blob = gzip.compress(Layer().file("a", os.urandom(50_000)).tar_bytes())
    refuse(blob[: len(blob) // 2], tmp_path / "t1", "truncated")
    tar = Layer().file("a", b"1").file("b", b"2").tar_bytes()
    broken = tar[:1024] + b"garbage!" * 64 + tar[1536:]  # second header overwritten
    refuse(broken, tmp_path / "t2", "not a valid tar", media_type=TAR)
    refuse(Layer().file("a", b"x" * 2000).tar_bytes()[:1000], tmp_path / "t3", "ends early",
           media_type=TAR)  # fmt: skip


def test_apply_rejects_gzip_bomb(tmp_path: Path) -> None:
    """A small blob that inflates past max_uncompressed stops early, with bounded memory."""
    bomb = Layer().file("zeros", b"\0" * (64 << 20)).gzip()
    assert len(bomb) < 100_000
    with pytest.raises(InvalidArgument, match="more than max_uncompressed=1048576 bytes"):
        apply(bomb, tmp_path / "t", max_uncompressed=1 << 20)
    # Under the cap the same blob applies.
    assert apply(bomb, tmp_path / "ok", max_uncompressed=65 << 20).size > 64 << 20


def test_apply_of_an_empty_stream_is_an_empty_layer(tmp_path: Path) -> None:
    result = apply(b"", tmp_path / "t", TAR)
    assert result == ApplyResult(f"sha256:{hashlib.sha256(b'').hexdigest()}", 0)


# --------------------------------------------------------------------------- semantics


def test_apply_creates_missing_parents(tmp_path: Path) -> None:
    apply(Layer().file("a/b/c/file", b"deep").gzip(), tmp_path / "t")
    assert (tmp_path / "t/a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE((tmp_path / "t/a/b").stat().st_mode) == 0o755


def test_apply_cleans_absolute_and_dotted_names_into_the_target(tmp_path: Path) -> None:
    layer = Layer().file("/abs/file", b"1").file("./dot/./file", b"2").file("x/../y", b"3")
    apply(layer.gzip(), tmp_path / "t")
    t = tmp_path / "t"
    assert [(t / p).read_bytes() for p in ("abs/file", "dot/file", "y")] == [b"1", b"2", b"3"]
    assert not (t / "x").exists()


def test_apply_replaces_existing_paths_but_merges_directories(tmp_path: Path) -> None:
    t = tmp_path / "t"
    (t / "dir").mkdir(parents=True)
    (t / "dir/old").write_text("lower")
    (t / "file_becomes_dir").write_text("x")
    (t / "dir_becomes_file").mkdir()
    (t / "dir_becomes_file/child").write_text("x")
    (t / "was_symlink").symlink_to("dir")
    layer = (
        Layer()
        .dir("dir", mode=0o700)
        .file("dir/new", b"upper")
        .dir("file_becomes_dir")
        .file("dir_becomes_file", b"now a file")
        .file("was_symlink", b"plain")
    )
    apply(layer.gzip(), t)
    assert sorted(os.listdir(t / "dir")) == ["new", "old"]
    assert stat.S_IMODE((t / "dir").stat().st_mode) == 0o700
    assert (t / "file_becomes_dir").is_dir()
    assert (t / "dir_becomes_file").read_bytes() == b"now a file"
    assert not (t / "was_symlink").is_symlink()
    assert not (t / "dir/was_symlink").exists()


def test_apply_sets_times_with_nanoseconds_and_directory_times_last(tmp_path: Path) -> None:
    layer = Layer().dir("d", mtime=T0 + 5)
    info = tarfile.TarInfo("d/f")
    info.pax_headers = {"mtime": f"{T0 + 7}.123456789"}
    layer.tar.addfile(info, io.BytesIO(b""))
    layer.file("d/g", b"later entry in the same directory")
    apply(layer.gzip(), tmp_path / "t")
    assert (tmp_path / "t/d").stat().st_mtime_ns == (T0 + 5) * 10**9
    assert (tmp_path / "t/d/f").stat().st_mtime_ns == (T0 + 7) * 10**9 + 123456789


def test_apply_keeps_symlinks_hardlinks_and_fifos(tmp_path: Path) -> None:
    layer = (
        Layer()
        .file("bin/busybox", b"\x7fELF", mode=0o755)
        .hardlink("bin/sh", "bin/busybox", mode=0o755)
        .symlink("bin/ls", "busybox")
        .symlink("dangling", "/nowhere/at/all")
        .node("run/fifo", tarfile.FIFOTYPE)
    )
    apply(layer.gzip(), tmp_path / "t")
    t = tmp_path / "t"
    assert os.path.samefile(t / "bin/sh", t / "bin/busybox")
    assert (t / "bin/busybox").stat().st_nlink == 2
    assert os.readlink(t / "bin/ls") == "busybox"
    assert os.readlink(t / "dangling") == "/nowhere/at/all"
    assert stat.S_ISFIFO((t / "run/fifo").lstat().st_mode)
    assert (t / "bin/ls").lstat().st_mtime_ns == T0 * 10**9


def test_apply_keeps_user_xattrs_as_binary(tmp_path: Path) -> None:
    info = tarfile.TarInfo("f")
    raw = b"\x01\xff\x00bin"
    info.pax_headers = {"SCHILY.xattr.user.blob": raw.decode("utf-8", "surrogateescape")}
    layer = Layer()
    layer.tar.addfile(info, io.BytesIO(b""))
    apply(layer.gzip(), tmp_path / "t")
    assert os.getxattr(tmp_path / "t/f", "user.blob") == raw


def test_apply_drops_overlay_xattrs_from_the_layer(tmp_path: Path) -> None:
    info = tarfile.TarInfo("d")
    info.type = tarfile.DIRTYPE
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
    layer = Layer()
    layer.tar.addfile(info)
    apply(layer.gzip(), tmp_path / "t")
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "t/d")


@pytest.mark.root
def test_apply_keeps_setuid_and_ownership(tmp_path: Path) -> None:
    require_root()
    cap = (
        b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\0" * 12
    )  # effective cap_net_raw, VFS_CAP_REVISION_2
    info = tarfile.TarInfo("usr/bin/ping")
    info.mode, info.uid, info.gid, info.mtime = 0o4755, 0, 0, T0
    info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    layer = Layer().dir("usr").dir("usr/bin")
    layer.tar.addfile(info, io.BytesIO(b""))
    layer.file("home/user/.profile", b"x", uid=1000, gid=1001, mode=0o2750)
    layer.dir("home/user", uid=1000, gid=1001, mode=0o3770)
    layer.symlink("home/user/link", ".profile", uid=1000, gid=1001)
    layer.node("dev/null", tarfile.CHRTYPE, 1, 3)
    apply(layer.gzip(), tmp_path / "t")
    t = tmp_path / "t"
    st = (t / "usr/bin/ping").stat()
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert os.getxattr(t / "usr/bin/ping", "security.capability") == cap
    prof = (t / "home/user/.profile").stat()
    assert (prof.st_uid, prof.st_gid, stat.S_IMODE(prof.st_mode)) == (1000, 1001, 0o2750)
    home = (t / "home/user").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1001, 0o3770)
    link = (t / "home/user/link").lstat()
    assert (link.st_uid, link.st_gid) == (1000, 1001)
    null = (t / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)


@pytest.mark.root
def test_apply_sets_owner_and_mode_that_file_creation_does_not_give(tmp_path: Path) -> None:
    """Files are created with their permission bits and owned by the daemon; owner and mode
    are changed only where that is not already right: a setgid directory's group, special
    bits, bits the umask strips, another owner."""
    require_root()
    layer = Layer().dir("shared", uid=0, gid=1234, mode=0o2775)
    layer.file("shared/root-file", b"r", uid=0, gid=0, mode=0o644)  # inherits 1234 at creation
    layer.file("shared/group-file", b"g", uid=0, gid=1234, mode=0o664)
    layer.file("plain", b"p", uid=0, gid=0, mode=0o644)
    layer.file("wide", b"w", uid=0, gid=0, mode=0o666)  # the umask would strip 0o022
    layer.file("owned", b"o", uid=7, gid=8, mode=0o600)
    layer.file("sticky-sgid", b"s", uid=0, gid=0, mode=0o3755)
    old_umask = os.umask(0o022)
    try:
        apply(layer.gzip(), tmp_path / "t")
    finally:
        os.umask(old_umask)
    t = tmp_path / "t"

    def owner_mode(name: str) -> tuple[int, int, int]:
        st = (t / name).stat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode("shared") == (0, 1234, 0o2775)
    assert owner_mode("shared/root-file") == (0, 0, 0o644)
    assert owner_mode("shared/group-file") == (0, 1234, 0o664)
    assert owner_mode("plain") == (0, 0, 0o644)
    assert owner_mode("wide") == (0, 0, 0o666)
    assert owner_mode("owned") == (7, 8, 0o600)
    assert owner_mode("sticky-sgid") == (0, 0, 0o3755)


def test_apply_whiteout_deletes_in_generic_mode(tmp_path: Path) -> None:
    t = tmp_path / "t"
    apply(Layer().file("etc/a", b"1").file("etc/b", b"2").dir("var/lib/x").gzip(), t)
    apply(Layer().whiteout("etc/a").whiteout("var/lib").whiteout("etc/missing").gzip(), t)
    assert sorted(os.listdir(t / "etc")) == ["b"]
    assert os.listdir(t / "var") == []


def test_apply_opaque_dir_keeps_only_this_layers_entries(tmp_path: Path) -> None:
    t = tmp_path / "t"
    apply(Layer().file("opt/old1", b"1").dir("opt/olddir").file("opt/olddir/f").gzip(), t)
    # The marker may come before or after this layer's own entries in the directory.
    apply(Layer().dir("opt").file("opt/early").opaque("opt").file("opt/late").gzip(), t)
    assert sorted(os.listdir(t / "opt")) == ["early", "late"]


def test_apply_ignores_other_aufs_metadata_entries(tmp_path: Path) -> None:
    apply(Layer().file(".wh..wh.plnk", b"x").file("kept", b"y").gzip(), tmp_path / "t")
    assert os.listdir(tmp_path / "t") == ["kept"]


@pytest.mark.root
def test_apply_converts_whiteout_to_overlay_char_device(tmp_path: Path) -> None:
    require_root()
    layer = Layer().dir("etc").whiteout("etc/passwd").whiteout("gone")
    apply(layer.gzip(), tmp_path / "upper", overlay_upper=True)
    for path in (tmp_path / "upper/etc/passwd", tmp_path / "upper/gone"):
        st = path.lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not (tmp_path / "upper/etc/.wh.passwd").exists()


@pytest.mark.root
def test_apply_converts_opaque_marker_to_overlay_xattr(tmp_path: Path) -> None:
    require_root()
    apply(Layer().dir("opt").opaque("opt").file("opt/z").gzip(), tmp_path / "u", overlay_upper=True)
    assert os.getxattr(tmp_path / "u/opt", "trusted.overlay.opaque") == b"y"
    assert os.listdir(tmp_path / "u/opt") == ["z"]


# --------------------------------------------------------------------------- hostile layers


def test_apply_refuses_dotdot_escape(tmp_path: Path, outside: Path) -> None:
    t = tmp_path / "target"
    refuse(Layer().file("../outside/pwned", b"x").gzip(), t, "'../outside/pwned'", "climbs out")
    refuse(Layer().file("a/../../outside/secret", b"x").gzip(), t, "climbs out")
    refuse(Layer().dir("../outside/sub", mode=0o777).gzip(), t, "climbs out")


def test_apply_refuses_symlink_parent_escape(tmp_path: Path, outside: Path) -> None:
    t = tmp_path / "target"
    refuse(Layer().symlink("evil", "../outside").file("evil/pwned", b"x").gzip(), t,
           "'evil/pwned'", "leads out of the target")  # fmt: skip
    # The same through a chain of links, and with the link already on disk from a lower layer.
    refuse(
        Layer().symlink("up", "..").symlink("chain", "up/outside").file("chain/secret").gzip(),
        t,
        "leads out of the target",
    )
    (t / "deep").mkdir()
    (t / "deep/ln").symlink_to("../../outside")
    refuse(Layer().dir("deep/ln/sub", mode=0o777).gzip(), t, "leads out of the target")


def test_apply_resolves_absolute_symlink_parents_inside_the_target(
    tmp_path: Path, outside: Path
) -> None:
    """An absolute link means the container's root, as containerd resolves it."""
    t = tmp_path / "target"
    layer = Layer().symlink("abs", str(outside)).file("abs/secret", b"overwritten?")
    apply(layer.gzip(), t)
    assert (t / str(outside).lstrip("/") / "secret").read_bytes() == b"overwritten?"


def test_apply_never_writes_through_a_symlink_at_the_entry_itself(
    tmp_path: Path, outside: Path
) -> None:
    t = tmp_path / "target"
    layer = (
        Layer()
        .symlink("s1", str(outside / "secret"))
        .file("s1", b"replaces the link", mode=0o777)
        .symlink("s2", "../outside/sub")
        .dir("s2", mode=0o777)
        .symlink("s3", "../outside/secret")
        .node("s3", tarfile.FIFOTYPE)
    )
    apply(layer.gzip(), t)
    assert (t / "s1").read_bytes() == b"replaces the link"
    assert (t / "s2").is_dir() and not (t / "s2").is_symlink()


def test_apply_refuses_hardlink_to_outside(tmp_path: Path, outside: Path) -> None:
    t = tmp_path / "target"
    refuse(Layer().hardlink("h", "../outside/secret").gzip(), t, "'h'", "hardlink target")
    # An absolute link name is cleaned into the target, where nothing of that name exists.
    refuse(Layer().hardlink("h", str(outside / "secret")).gzip(), t, "does not exist")


def test_apply_refuses_hardlink_through_a_symlink(tmp_path: Path, outside: Path) -> None:
    t = tmp_path / "target"
    refuse(Layer().symlink("evil", "../outside").hardlink("h", "evil/secret").gzip(), t,
           "'evil' is a symlink")  # fmt: skip
    refuse(Layer().file("d/f").symlink("ln", "d").hardlink("h", "ln/f").gzip(), t, "symlink")


def test_apply_refuses_whiteout_outside(tmp_path: Path, outside: Path) -> None:
    t = tmp_path / "target"
    refuse(Layer().whiteout("../outside/secret").gzip(), t, "climbs out")
    refuse(Layer().symlink("evil", "../outside").whiteout("evil/secret").gzip(), t,
           "leads out of the target")  # fmt: skip
    refuse(Layer().symlink("evil", "../outside").opaque("evil").gzip(), t, "leads out")
    refuse(Layer().file("..wh..", b"").file(".wh..", b"").gzip(), t, "does not name a file")


@pytest.mark.root
def test_apply_refuses_overlay_whiteout_outside(tmp_path: Path, outside: Path) -> None:
    require_root()
    t = tmp_path / "target"
    t.mkdir()
    blob = Layer().symlink("evil", "../outside").whiteout("evil/secret").gzip()
    with pytest.raises(InvalidArgument, match="leads out"):
        apply(blob, t, overlay_upper=True)
    with pytest.raises(InvalidArgument, match="leads out"):
        apply(Layer().symlink("e", "../outside").opaque("e").gzip(), t, overlay_upper=True)


# --------------------------------------------------------------------------- overlayfs


@pytest.fixture
def overlay_mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown, whatever the test did."""
    mounted: list[Path] = []
    yield mounted
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.root
def test_apply_overlay_upper_layers_stack_under_a_real_overlay_mount(
    tmp_path: Path, overlay_mounts: list[Path]
) -> None:
    """Whiteouts hide lower files and opaque directories hide lower contents."""
    require_root()
    mount = require_binary("mount")
    base = (
        Layer()
        .file("etc/passwd", b"root")
        .file("etc/group", b"root")
        .file("opt/app/old", b"1")
        .file("opt/keep", b"2")
        .file("var/log/x", b"3")
    )
    top = (
        Layer()
        .whiteout("etc/passwd")
        .dir("opt/app")
        .opaque("opt/app")
        .file("opt/app/new", b"n")
        .whiteout("var/log")
    )
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    apply(base.gzip(), l1, overlay_upper=True)
    apply(top.gzip(), l2, overlay_upper=True)
    merged = tmp_path / "merged"
    merged.mkdir()
    # Read-only view of a snapshot chain: both layers as lowers, nearest first.
    subprocess.run(
        [mount, "-t", "overlay", "overlay", "-o", f"lowerdir={l2}:{l1}", str(merged)],
        check=True,
    )
    overlay_mounts.append(merged)
    assert sorted(os.listdir(merged / "etc")) == ["group"]
    assert sorted(os.listdir(merged / "opt/app")) == ["new"]
    assert sorted(os.listdir(merged / "opt")) == ["app", "keep"]
    assert sorted(os.listdir(merged / "var")) == []
    assert (merged / "etc/group").read_bytes() == b"root"


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_apply_reads_gnu_tar_long_names_and_sparse_files(tmp_path: Path, fmt: str) -> None:
    """Layers written by GNU tar: GNU or pax long names, and sparse maps with holes."""
    tar = require_binary("tar")
    src = tmp_path / "src"
    deep = src / ("d" * 120) / "ünïcödé"
    deep.mkdir(parents=True)
    (deep / ("f" * 200)).write_bytes(b"long name")
    with (src / "sparse").open("wb") as f:
        f.seek(3 << 20)
        f.write(b"data in the middle")
        f.truncate(8 << 20)
    blob = subprocess.run(
        [tar, f"--format={fmt}", "--sparse", "-C", str(src), "-czf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout
    apply(blob, tmp_path / "t")
    t = tmp_path / "t"
    assert (t / deep.relative_to(src) / ("f" * 200)).read_bytes() == b"long name"
    assert (t / "sparse").read_bytes() == (src / "sparse").read_bytes()


def test_apply_bounds_open_fds_and_sets_every_directory_time(tmp_path: Path) -> None:
    layer = Layer()
    for i in range(1500):
        layer.dir(f"d{i:04}", mtime=T0 + i).file(f"d{i:04}/f", b"x")
    fds_before = len(os.listdir("/proc/self/fd"))
    apply(layer.gzip(), tmp_path / "t")
    assert len(os.listdir("/proc/self/fd")) == fds_before
    times = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "t").iterdir()}
    assert times == {f"d{i:04}": (T0 + i) * 10**9 for i in range(1500)}


def test_apply_stops_its_decoder_thread_when_an_entry_is_refused(tmp_path: Path) -> None:
    big = Layer().file("../escape", b"x")
    for i in range(50):
        big.file(f"f{i}", os.urandom(1 << 20))  # more than the decoder's queue holds
    with pytest.raises(InvalidArgument):
        apply(big.gzip(), tmp_path / "t")
    # Other tests leave idle worker threads around, so count only decoders.
    assert not [t for t in threading.enumerate() if t.name == "layer-decoder"]


# --------------------------------------------------------------------------- header parsing


def _header_fields(info: tarfile.TarInfo) -> dict[str, object]:
    return {
        key: getattr(info, key)
        for key in ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname",
                    "uname", "gname", "devmajor", "devminor")
    } | {"sparse": getattr(info, "_sparse_structs", None)}


def _parse(cls: type[tarfile.TarInfo], buf: bytes) -> dict[str, object] | str:
    try:
        return _header_fields(cls.frombuf(buf, "utf-8", "surrogateescape"))
    except tarfile.HeaderError as exc:
        return type(exc).__name__


def _headers() -> list[bytes]:
    """First header blocks of members in every format, including awkward ones."""
    infos = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for name, kind in (("a/file", tarfile.REGTYPE), ("dir/", tarfile.DIRTYPE),
                           ("d" * 120 + "/f" * 10, tarfile.REGTYPE), ("l", tarfile.SYMTYPE),
                           ("h", tarfile.LNKTYPE), ("c", tarfile.CHRTYPE),
                           ("ünï/çødé", tarfile.REGTYPE), ("v7dir/", tarfile.AREGTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, 0o4755, T0
            info.uid, info.gid, info.uname, info.gname = 1000, 1000, "user", "group"
            info.linkname = "target" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.devmajor, info.devminor = (1, 3) if kind == tarfile.CHRTYPE else (0, 0)
            infos.append((info, fmt))
        big = tarfile.TarInfo("big")
        big.uid = 1 << 30  # base-256 in GNU format, pax record in PAX
        infos.append((big, fmt))
    out = []
    for info, fmt in infos:
        try:
            block = info.tobuf(fmt, "utf-8", "surrogateescape")
        except ValueError:
            continue  # not representable in this format
        for at in range(0, len(block), tarfile.BLOCKSIZE):
            out.append(block[at : at + tarfile.BLOCKSIZE])
    return out


def test_fast_header_parser_reads_what_tarfile_reads() -> None:
    from runtime.pkg.archive.tar import TarInfo as _TarInfo

    headers = _headers()
    rng = __import__("random").Random(7)
    mutated = []
    for buf in headers:
        for _ in range(40):
            data = bytearray(buf)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.choice((0, 0x20, 0x30, 0x37, 0x38, 0x80,
                                                             0xFF, rng.randrange(256)))
            if rng.random() < 0.7:  # mostly keep the checksum valid, to reach the fields
                data[148:156] = b"        "
                data[148:156] = b"%06o\0 " % (sum(data) & 0o777777)
            mutated.append(bytes(data))
    parsed = 0
    for buf in [*headers, bytes(512), b"\0" * 511 + b"\1", *mutated]:
        assert len(buf) == tarfile.BLOCKSIZE
        ours = _parse(_TarInfo, buf)
        assert ours == _parse(tarfile.TarInfo, buf), buf
        parsed += isinstance(ours, dict)
    assert parsed > len(headers) + len(mutated) // 2, "most mutants keep a parseable header"
