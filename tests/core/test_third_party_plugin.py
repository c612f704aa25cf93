"""Acceptance: a third-party package, installed with pip, is a plugin like the built-ins.

The packages are built and installed for real (``pip install``: wheel build, dist-info,
entry points), but into a target directory that only the daemon under test has on its
``PYTHONPATH``: a site-wide install would show the broken package to every other test
and daemon running on this machine meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import Daemon

GREETER = '''
"""A third-party Moorage plugin: greeter.basic."""

from runtime.core.hookspecs import hookimpl
from runtime.core.registration import PluginConfig, Registration


class GreeterConfig(PluginConfig):
    greeting: str = "hello"


class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting


async def init(ctx):
    # Leaves proof of the configuration it received where the test can read it.
    (ctx.root / "greeting").write_text(ctx.config.greeting)
    return Greeter(ctx.config.greeting)


@hookimpl
def moorage_plugins():
    yield Registration(
        type="greeter", id="basic", init=init, config=GreeterConfig, description="says hello"
    )
'''

BROKEN = '''
"""A plugin package whose module cannot be imported."""

raise ImportError("libgreet.so.1: cannot open shared object file")
'''


def write_package(root: Path, dist: str, version: str, module: str, code: str) -> Path:
    root.mkdir(parents=True)
    root.joinpath("pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "{version}"

        [project.entry-points."moorage.plugins"]
        {module} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
    """)
    )
    root.joinpath(f"{module}.py").write_text(code)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both packages pip-installed into one directory; yields it (for ``PYTHONPATH``)."""
    tmp = tmp_path_factory.mktemp("third-party")
    packages = [
        write_package(tmp / "greeter", "moorage-greeter", "1.4.2", "moorage_greeter", GREETER),
        write_package(tmp / "broken", "moorage-broken", "0.0.1", "moorage_broken", BROKEN),
    ]
    target = tmp / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            *map(str, packages),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in target.glob("*.dist-info")) == [
        "moorage_broken-0.0.1.dist-info",
        "moorage_greeter-1.4.2.dist-info",
    ]
    yield target


def moorage(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "--address", daemon.address, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_third_party_plugin_runs_with_its_config(site: Path, tmp_path: Path) -> None:
    extra = '[plugins."greeter.basic"]\ngreeting = "hi"\n'
    with Daemon(tmp_path, extra, env={"PYTHONPATH": str(site)}) as daemon:
        listing = moorage(daemon, "plugins", "ls")
        assert listing.returncode == 0, listing.stderr
        [row] = [line for line in listing.stdout.splitlines() if line.startswith("greeter ")]
        assert row.split() == ["greeter", "basic", "ok", "moorage-greeter", "1.4.2"]

        as_json = moorage(daemon, "plugins", "ls", "--format", "json", "type==greeter")
        assert as_json.returncode == 0, as_json.stderr
        [plugin] = json.loads(as_json.stdout)
        assert {k: plugin[k] for k in ("type", "id", "status", "distribution", "version")} == {
            "type": "greeter",
            "id": "basic",
            "status": "ok",
            "distribution": "moorage-greeter",
            "version": "1.4.2",
        }
        assert plugin["description"] == "says hello"
    assert (daemon.root / "greeter.basic" / "greeting").read_text() == "hi"


def test_third_party_plugin_bad_value_stops_the_daemon_naming_the_key(
    site: Path, tmp_path: Path
) -> None:
    daemon = Daemon(
        tmp_path, '[plugins."greeter.basic"]\ngreeting = 5\n', env={"PYTHONPATH": str(site)}
    )
    try:
        assert daemon.spawn().wait() == 1
    finally:
        daemon.close()
    assert (
        f"{daemon.config_path}: [plugins.\\\"greeter.basic\\\"] key 'greeting': "
        "expected `str`, got `int`"
    ) in daemon.log()


def test_third_party_package_failing_to_import_is_a_plugin_in_error(
    site: Path, tmp_path: Path
) -> None:
    with Daemon(tmp_path, env={"PYTHONPATH": str(site)}) as daemon:
        plugins = {f"{p.type}.{p.id}": p for p in daemon.client().plugins()}
        broken = plugins["entrypoint.moorage_broken"]
        assert (broken.status, broken.distribution, broken.version) == (
            "error",
            "moorage-broken",
            "0.0.1",
        )
        assert broken.reason == (
            "import of moorage_broken failed: ImportError: "
            "libgreet.so.1: cannot open shared object file"
        )
        assert plugins["greeter.basic"].status == "ok"
        assert plugins["server.http"].status == "ok"
        errors = moorage(daemon, "plugins", "ls", "-q", "status==error")
        assert errors.stdout.splitlines() == ["entrypoint.moorage_broken"]
    assert "plugin entry point moorage_broken failed to load" in daemon.log()
