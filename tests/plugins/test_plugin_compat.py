"""Broken plugin packages, really pip-installed, never take the daemon down.

Two throwaway distributions are built in ``tmp_path`` and installed with
``pip install --target`` into a directory the daemon gets on ``PYTHONPATH``, so
the test environment itself is never changed:

* ``moorage-test-future`` declares plugin API version 99: its plugin is listed
  in status ``error`` naming both versions.
* ``moorage-test-broken`` raises on import: its entry point is listed in status
  ``error`` with the exception.

Both keep their distribution and version in ``moorage plugins ls``, and the
daemon answers as usual.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import Daemon

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"

[project.entry-points."moorage.plugins"]
{entry_point} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]
"""

FUTURE_MODULE = """\
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import Registration


async def init(ctx):
    raise AssertionError("a plugin of an unsupported API version must never start")


@hookimpl
def moorage_plugins():
    yield Registration(type="greeter", id="future", init=init, api_version=99)
"""

BROKEN_MODULE = """\
raise RuntimeError("broken on purpose")
"""


def make_package(
    base: Path, dist: str, version: str, entry_point: str, module: str, code: str
) -> Path:
    path = base / dist
    path.mkdir(parents=True)
    (path / "pyproject.toml").write_text(
        PYPROJECT.format(dist=dist, version=version, entry_point=entry_point, module=module)
    )
    (path / f"{module}.py").write_text(textwrap.dedent(code))
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Both throwaway packages pip-installed into their own directory."""
    packages = tmp_path / "packages"
    future = make_package(
        packages, "moorage-test-future", "2.0.1", "future", "moorage_test_future", FUTURE_MODULE
    )
    broken = make_package(
        packages, "moorage-test-broken", "0.3", "broken", "moorage_test_broken", BROKEN_MODULE
    )
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--target", str(target), str(future), str(broken)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return target


def plugin_rows(daemon: Daemon) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "--address", daemon.address,
         "plugins", "ls", "--format", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {f"{p['type']}.{p['id']}": p for p in json.loads(result.stdout)}


def test_unsupported_api_version_and_import_error_are_plugin_errors(
    tmp_path: Path, site: Path
) -> None:
    with Daemon(tmp_path / "d", env={"PYTHONPATH": str(site)}) as daemon:
        rows = plugin_rows(daemon)
        future = rows["greeter.future"]
        assert (future["status"], future["distribution"], future["version"]) == (
            "error",
            "moorage-test-future",
            "2.0.1",
        )
        assert future["api_version"] == 99
        assert future["reason"] == (
            "built for plugin API version 99, but this Moorage serves version(s) 1"
        )
        broken = rows["entrypoint.broken"]
        assert (broken["status"], broken["distribution"], broken["version"]) == (
            "error",
            "moorage-test-broken",
            "0.3",
        )
        assert broken["reason"] == (
            "import of moorage_test_broken failed: RuntimeError: broken on purpose"
        )
        assert rows["snapshotter.native"]["status"] == "ok"
        assert daemon.client().healthz().status == "ok"
    assert "broken on purpose" in daemon.log()
