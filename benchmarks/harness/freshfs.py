"""A fresh ext4 filesystem per repetition, loop-mounted from a sparse image file.

The host's root is ext4 without a journal, where creating files right after
many were deleted is slow; every cold-pull repetition (of either runtime, and
of the tar floor) gets a filesystem of its own so they compare like for like.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["fresh_filesystem"]


@contextmanager
def fresh_filesystem(size: str = "6G", base: Path | None = None) -> Iterator[Path]:
    """Yield the mount point of a new ext4 filesystem; unmount and delete it after."""
    work = Path(tempfile.mkdtemp(prefix="mbfs", dir=base or "/var/tmp"))
    image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-R", str(mnt)], check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)
