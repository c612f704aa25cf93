"""Staged layers: applied in overlay-upperdir form elsewhere, then grafted by renames."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from runtime.plugins.diff.walking.apply import apply_layer
from runtime.plugins.diff.walking.staging import discard, graft, stage
from tests.fixtures.images import LayerBuilder, snapshot_tree
from tests.fixtures.system import require_root

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layer() -> bytes:
    return (
        LayerBuilder()
        .whiteout("gone")
        .opaque("dir")
        .file("dir/kept", "k\n")
        .file("top", "t\n", mode=0o600)
        .build()
        .data
    )


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(Path(dirpath, name))
            out[str(Path(dirpath, name).relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_rdev)
    return out


def test_graft_gives_the_same_upperdir_as_applying_in_place(tmp_path: Path) -> None:
    require_root()
    data = _layer()
    direct = tmp_path / "direct"
    direct.mkdir()
    expected = apply_layer(io.BytesIO(data), direct, media_type=GZIP, overlay_upper=True)

    staged = stage(io.BytesIO(data), tmp_path / "scratch", media_type=GZIP)
    assert staged.result == expected
    upper = tmp_path / "upper"
    upper.mkdir(mode=0o750)
    assert graft(staged, upper)
    assert not staged.path.exists()
    assert _tree(upper) == _tree(direct)
    assert stat.S_ISCHR(os.lstat(upper / "gone").st_mode), "whiteout is a 0/0 char device"
    assert os.getxattr(upper / "dir", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(upper.stat().st_mode) == 0o750, "the upperdir keeps its own mode"
    assert snapshot_tree(upper / "dir") == snapshot_tree(direct / "dir")


def test_graft_carries_an_opaque_root(tmp_path: Path) -> None:
    require_root()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in ((".wh..wh..opq", b""), ("only", b"o\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(raw.getvalue())
    staged = stage(io.BytesIO(data), tmp_path / "scratch", media_type=GZIP)
    upper = tmp_path / "upper"
    upper.mkdir()
    assert graft(staged, upper)
    assert os.getxattr(upper, "trusted.overlay.opaque") == b"y"


def test_graft_refuses_a_non_empty_upperdir_and_discard_cleans_up(tmp_path: Path) -> None:
    require_root()
    staged = stage(io.BytesIO(_layer()), tmp_path / "scratch", media_type=GZIP)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "already").write_text("x")
    assert not graft(staged, upper)
    assert staged.path.exists() and not (upper / "top").exists()
    discard(staged)
    assert not staged.path.exists()


def test_graft_refuses_another_file_system(tmp_path: Path) -> None:
    require_root()
    # A tmpfs of its own: another file system whatever the temporary directory is on.
    other = tmp_path / "other-fs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    staged = stage(io.BytesIO(_layer()), tmp_path / "scratch", media_type=GZIP)
    upper = other / "upper"
    try:
        upper.mkdir()
        assert not graft(staged, upper)
        assert os.listdir(upper) == []
    finally:
        subprocess.run(["umount", str(other)], check=True)
        discard(staged)
