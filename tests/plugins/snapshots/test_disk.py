"""disk_usage: the ``du`` of every backend."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from runtime.plugins.snapshots.disk import disk_usage


def _du(path: Path, *flags: str) -> int:
    out = subprocess.run(["du", "-s", *flags, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def test_disk_usage_agrees_with_du_counting_hardlinks_once(tmp_path: Path) -> None:
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "file").write_bytes(b"x" * 20000)
    os.link(tmp_path / "dir" / "file", tmp_path / "link")
    os.symlink("dir/file", tmp_path / "symlink")
    os.symlink("/", tmp_path / "dir" / "escape")  # not followed
    (tmp_path / "empty").write_bytes(b"")

    usage = disk_usage(tmp_path)

    assert usage.size == _du(tmp_path, "--block-size=1")
    assert usage.inodes == _du(tmp_path, "--inodes") == 7


def test_disk_usage_of_a_missing_tree_is_zero(tmp_path: Path) -> None:
    assert (disk_usage(tmp_path / "gone").size, disk_usage(tmp_path / "gone").inodes) == (0, 0)
