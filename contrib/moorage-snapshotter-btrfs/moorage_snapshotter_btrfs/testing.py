"""A throwaway btrfs filesystem for tests: an image file, loop-mounted.

Example::

    with loop_btrfs(tmp_path / "img", tmp_path / "mnt") as mountpoint:
        snapshotter = BtrfsSnapshotter(mountpoint / "root")

Needs root, ``mkfs.btrfs`` and a free loop device. The image is sparse, so the
512 MiB default costs only what is written.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

__all__ = ["loop_btrfs", "unavailable"]


def unavailable(reason: str) -> NoReturn:
    """Skip the calling pytest test locally, fail it in CI.

    In CI a missing prerequisite is a broken machine. Imports pytest only when
    called: the package itself does not need it.
    """
    import pytest

    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@contextmanager
def loop_btrfs(image: Path, mountpoint: Path, size: str = "512M") -> Iterator[Path]:
    """Create ``image``, format it btrfs and mount it on ``mountpoint`` for the block.

    On exit the filesystem is unmounted and every loop device still backed by
    ``image`` is detached (``mount -o loop`` normally detaches its own), then
    the image is deleted.

    Raises:
        RuntimeError: A command failed; the message holds its stderr.
    """
    image, mountpoint = Path(image), Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run("truncate", "-s", size, str(image))
    try:
        _run("mkfs.btrfs", "-q", "-f", str(image))
        _run("mount", "-o", "loop", str(image), str(mountpoint))
        try:
            yield mountpoint
        finally:
            if subprocess.run(
                ["umount", str(mountpoint)], capture_output=True, check=False
            ).returncode:
                # Busy (a mount a failed test left inside): detach it lazily.
                _run("umount", "-l", str(mountpoint))
    finally:
        for line in _run("losetup", "-j", str(image)).splitlines():
            device = line.split(":", 1)[0]
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        image.unlink(missing_ok=True)
