"""What the OCI runtime says it can mount (its ``features`` document), as runtimes report it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anyio

from runtime.plugins.runtime.runc.oci import OciRuntime
from runtime.plugins.runtime.runc.queries import TaskTable
from tests.fixtures.system import require_binary


def _table(binary: str, tmp_path: Path) -> TaskTable:
    return TaskTable("runtime.test", OciRuntime(binary, tmp_path), tmp_path, tmp_path)


def test_mount_options_are_the_runtimes_features_mount_options(tmp_path: Path) -> None:
    require_binary("runc")
    runc = shutil.which("runc")
    assert runc is not None
    listed = json.loads(subprocess.run([runc, "features"], capture_output=True,
                                       check=True).stdout)["mountOptions"]
    table = _table(runc, tmp_path)
    assert anyio.run(table.mount_options) == frozenset(listed)
    # runc 1.1 and later make recursive read-only mounts.
    assert "rro" in anyio.run(table.mount_options)


def test_a_runtime_without_a_features_command_has_no_mount_options(tmp_path: Path) -> None:
    fake = tmp_path / "old-runtime"
    fake.write_text("#!/bin/sh\necho 'unknown command' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert anyio.run(_table(str(fake), tmp_path).mount_options) == frozenset()
    missing = tmp_path / "not-there"
    assert anyio.run(_table(str(missing), tmp_path).mount_options) == frozenset()
