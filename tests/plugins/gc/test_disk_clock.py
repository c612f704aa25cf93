"""The collection's start on the file system's own clock."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.plugins.gc.disk import fs_clock_ns


def test_fs_clock_is_after_every_file_written_before_it(tmp_path: Path) -> None:
    # Multigrain ctimes (Linux 6.13+) run ahead of the coarse clock, and a coarse clock
    # ties within a tick: neither may make a file written before the start look newer.
    for i in range(50):
        blob = tmp_path / f"blob{i}"
        blob.write_bytes(b"x")
        written = os.stat(blob).st_ctime_ns
        assert written < fs_clock_ns(tmp_path)


def test_fs_clock_without_a_directory_is_the_coarse_clock() -> None:
    assert fs_clock_ns() > 0
