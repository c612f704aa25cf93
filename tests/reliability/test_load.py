"""Load (``slow``): the figures of ``benchmarks/load_api.py`` at a size a test run affords.

``pytest -m slow tests/reliability`` runs it; the full-size run is the command itself
(``python benchmarks/load_api.py``), whose last figures docs/reliability.md quotes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.system import require_root

pytestmark = [pytest.mark.slow, pytest.mark.root]

SCALE = float(os.environ.get("MOORAGE_LOAD_SCALE", "0.25"))


def test_api_under_many_clients(tmp_path: Path) -> None:
    """Concurrent clients, mixed reads and writes: no error, and the daemon still answers."""
    from benchmarks.load_api import run_api

    result = run_api(tmp_path, clients=int(200 * SCALE), seconds=60 * SCALE)
    assert result["error_count"] == 0, result["errors"]
    assert result["healthy_after"]
    assert result["latency"]["all"]["p99_ms"] < 5000


def test_many_containers_at_once(tmp_path: Path, busybox_rootfs: Path) -> None:
    """Containers via ``moorage run -d`` all run at once and all go without a trace."""
    require_root()
    from benchmarks.load_api import run_containers

    count = int(100 * SCALE)
    result = run_containers(tmp_path, count)
    assert result["problems"] == []
    assert result["running_at_once"] == result["alive"] == count
    assert result["left_after"] == 0


def test_large_image_store_lists_with_filters(tmp_path: Path) -> None:
    """Thousands of image records: listings with filters find exactly what they should."""
    from benchmarks.load_api import run_images

    count = int(10_000 * SCALE)
    result = run_images(tmp_path, count, repeats=3)
    lists = result["lists"]
    assert lists["all"]["found"] == count
    assert lists["labels.tier==gold"]["found"] == count // 100
    assert lists["all"]["p99_ms"] < 10_000
