"""The compiled front end (frontend/moorage.c) answers as the Python CLI does.

``moorage`` is a small C program that sends the hot commands' requests itself
(``version``, ``run``, ``tasks kill``, ``tasks rm``, ``containers rm``) and runs
``moorage-py``, the Python CLI beside it, for anything else. Each test runs a
command line through both, against the same real daemon, and asks for the same
exit code, stdout and stderr. The front end is compiled here from the tree's
source, as setup.py compiles it; the packaging tests build and install wheels.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime
from runtime.cli.main import _FAST, _RUN_FLAGS
from runtime.core import errors
from tests.fixtures.images import ImageLayout
from tests.fixtures.system import require_binary, unavailable
from tests.plugins.runtime.helpers import DEFAULT_CONFIG, RuntimeDaemon, require_runtime_host

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "frontend" / "moorage.c"
UNREACHABLE = "unix:///tmp/moorage-test-nothing-here.sock"

Result = tuple[int, str, str]


class Commands:
    """``moorage`` (the front end) and ``moorage-py`` (the Python CLI) side by side."""

    def __init__(self, bin_dir: Path) -> None:
        self.frontend = bin_dir / "moorage"
        self.python = bin_dir / "moorage-py"

    def _run(self, exe: Path, args: tuple[str, ...], env: dict[str, str] | None) -> Result:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        environ["PYTHONPATH"] = str(REPO)
        environ.update(env or {})
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, env=environ,
                              timeout=120, check=False)
        return done.returncode, done.stdout, done.stderr

    def frontend_run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return self._run(self.frontend, args, env)

    def python_run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return self._run(self.python, args, env)

    def same(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run ``args`` through both; assert they agree; the common result."""
        python = self.python_run(*args, env=env)
        assert self.frontend_run(*args, env=env) == python
        return python


def compile_frontend(target: Path) -> None:
    cc = require_binary("cc")
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
                    f'-DMOORAGE_VERSION="{runtime.__version__}"', "-o", str(target),
                    str(SOURCE)], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> Commands:
    """The front end and the Python CLI (for this interpreter) in one directory."""
    bin_dir = tmp_path_factory.mktemp("bin")
    compile_frontend(bin_dir / "moorage")
    script = (REPO / "bin" / "moorage-py").read_text().replace("#!python", f"#!{sys.executable}",
                                                              1)
    (bin_dir / "moorage-py").write_text(script)
    (bin_dir / "moorage-py").chmod(0o755)
    return Commands(bin_dir)


#: A pull from a registry that is not there (``localhost:1``) is tried again after
#: 0.05, 0.1 and 0.2 s, not 0.5, 1 and 2 s: the specs ask for the answer, not the backoff.
QUICK_RETRIES = DEFAULT_CONFIG + """
[plugins."images.store".retry]
backoff = 0.05
max_backoff = 0.2
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeDaemon]:
    require_runtime_host()
    running = RuntimeDaemon(tmp_path_factory.mktemp("frontend"), QUICK_RETRIES)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def image(daemon: RuntimeDaemon, busybox_layout: ImageLayout,
          tmp_path_factory: pytest.TempPathFactory, commands: Commands) -> str:
    """The busybox image, imported into the daemon; its name."""
    archive = tmp_path_factory.mktemp("image") / "busybox.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(busybox_layout.path, arcname=".")
    code, out, err = commands.python_run("--address", daemon.address, "images", "import",
                                         str(archive))
    assert code == 0, err
    return out.split()[0]


@pytest.fixture(scope="module")
def rootfs(daemon: RuntimeDaemon, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.plugins.runtime.helpers import make_rootfs

    return make_rootfs(tmp_path_factory.mktemp("rootfs") / "rootfs")


def on(daemon: RuntimeDaemon, *args: str) -> tuple[str, ...]:
    return ("--address", daemon.address, *args)


# -- the tables the front end copies -----------------------------------------------------


def test_frontend_knows_every_error_code_of_the_python_cli() -> None:
    table = re.search(r"KNOWN_CODES\[\] = \{(.*?)\};", SOURCE.read_text(), re.DOTALL)
    assert table is not None
    assert re.findall(r'"(\w+)"', table.group(1)) == sorted(errors._BY_CODE)


def test_frontend_knows_the_daemons_missing_image_message() -> None:
    """``run`` falls back to the Python CLI (which pulls) on exactly this NotFound."""
    from runtime.api.constants import MISSING_IMAGE

    found = re.search(r'#define MISSING_IMAGE "(.*?)"', SOURCE.read_text())
    assert found is not None and found.group(1) == MISSING_IMAGE


def test_frontend_flags_are_fast_path_flags_of_the_python_cli() -> None:
    """A flag the front end parses means the same to runtime.cli.main's fast path."""
    text = SOURCE.read_text()
    kinds = {"BOOL": bool, "STR": str, "LIST": list}
    tables = {"RUN_FLAGS": _RUN_FLAGS, "KILL_FLAGS": _FAST[("tasks", "kill")][2],
              "TASKS_RM_FLAGS": _FAST[("tasks", "rm")][2],
              "CONTAINERS_RM_FLAGS": _FAST[("containers", "rm")][2]}
    for name, python_flags in tables.items():
        table = re.search(rf"{name}\[\] = \{{(.*?)\}};", text, re.DOTALL)
        assert table is not None, name
        flags = re.findall(r'\{"([-\w]+)", (\w+), D_\w+\}', table.group(1))
        assert flags, name
        for flag, kind in flags:
            assert flag in python_flags, (name, flag)
            assert python_flags[flag][1] is kinds[kind], (name, flag)


# -- without a daemon ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("version",),
    ("run", "--rm", "--net", "none", "--name", "x", "busybox", "echo", "hi"),
    ("run", "-d", "--net", "none", "busybox", "sleep", "600"),
    ("tasks", "kill", "-s", "SIGKILL", "x"),
    ("tasks", "kill", "x", "y"),
    ("tasks", "rm", "-f", "x"),
    ("containers", "rm", "x"),
])
def test_daemon_not_running_is_reported_alike(commands: Commands, args: tuple[str, ...]) -> None:
    code, _, err = commands.same("--address", UNREACHABLE, *args)
    assert code != 0
    assert "is it running?" in err


def test_address_comes_from_the_environment(commands: Commands) -> None:
    code, _, err = commands.same("version", env={"MOORAGE_ADDRESS": UNREACHABLE})
    assert (code, UNREACHABLE in err) == (1, True)


def test_kill_with_exec_id_of_many_tasks_is_refused_alike(commands: Commands) -> None:
    assert commands.same("--address", UNREACHABLE, "tasks", "kill", "--exec-id", "e", "a",
                         "b")[0] == 2


@pytest.mark.parametrize("args", [
    ("--help",),
    ("tasks", "kill", "--bogus", "x"),
    ("tasks", "kill", "-s=KILL", "x"),
    ("containers", "rm"),
    ("run", "--rm"),
    ("version", "--format", "yaml"),
    ("--address",),
])
def test_command_lines_it_does_not_handle_go_to_the_python_cli(
        commands: Commands, args: tuple[str, ...]) -> None:
    commands.same(*args)


# -- against a daemon ----------------------------------------------------------------------


def test_version(commands: Commands, daemon: RuntimeDaemon) -> None:
    v = runtime.__version__
    assert commands.same(*on(daemon, "version")) == (
        0, f"Client:\n  Version: {v}\nServer:\n  Version: {v}\n", "")
    commands.same(*on(daemon, "version", "--format=table"))
    assert commands.same(*on(daemon, "version", "--format", "json"))[0] == 0


def test_run_rm_relays_output_and_exit_status(commands: Commands, daemon: RuntimeDaemon,
                                              image: str) -> None:
    script = "echo to-out; echo to-err >&2; exit 7"
    assert commands.same(*on(daemon, "run", "--rm", "--net", "none", image, "sh", "-c",
                             script)) == (7, "to-out\n", "to-err\n")
    assert daemon.client().containers() == []


def test_run_rm_with_env_and_a_directory_rootfs(commands: Commands, daemon: RuntimeDaemon,
                                                rootfs: Path) -> None:
    args = on(daemon, "run", "--rm", "--net=none", "-e", "A=1", "--env", "B", "-e", "UNSET_X",
              "--rootfs", str(rootfs), "busybox", "sh", "-c", 'echo "$A,$B,${UNSET_X-unset}"')
    assert commands.same(*args, env={"B": "two"}) == (0, "1,two,unset\n", "")


def test_run_rm_of_a_command_that_cannot_run(commands: Commands, daemon: RuntimeDaemon,
                                             image: str) -> None:
    code, _, err = commands.same(*on(daemon, "run", "--rm", "--net", "none", image,
                                     "no-such-command"))
    assert code == 127 and "executable file not found" in err


def test_run_of_an_image_not_stored_goes_to_the_python_cli(commands: Commands,
                                                           daemon: RuntimeDaemon) -> None:
    code, _, err = commands.same(*on(daemon, "run", "--rm", "--pull", "never", "nothing:here",
                                     "true"))
    assert code == 125
    code, _, err = commands.same(*on(daemon, "run", "--rm", "localhost:1/nothing:here", "true"))
    assert code == 125 and "Unable to find image" in err
    # Detached, the daemon's MISSING_IMAGE answer to POST /v1/run sends it there too.
    code, _, err = commands.same(*on(daemon, "run", "-d", "--net", "none",
                                     "localhost:1/nothing:here", "true"))
    assert code == 125 and "Unable to find image" in err


def test_detached_run_and_teardown(commands: Commands, daemon: RuntimeDaemon,
                                   image: str) -> None:
    def both(*args: str) -> None:
        python = commands.python_run(*on(daemon, *(a.format("py") for a in args)))
        frontend = commands.frontend_run(*on(daemon, *(a.format("fe") for a in args)))
        assert frontend == tuple(v.replace("py-", "fe-") if isinstance(v, str) else v
                                 for v in python)
        assert python[0] == 0, python

    both("run", "-d", "--net", "none", "--name", "{}-1", image, "sleep", "600")
    # The name is taken: the daemon's error, exit 125.
    assert commands.same(*on(daemon, "run", "-d", "--net", "none", "--name", "py-1", image,
                             "true"))[0] == 125
    both("tasks", "kill", "-s", "SIGKILL", "{}-1")
    both("tasks", "rm", "-f", "{}-1")
    both("containers", "rm", "{}-1")
    assert daemon.client().containers() == []


def test_teardown_of_many_and_of_unknown_containers(commands: Commands, daemon: RuntimeDaemon,
                                                    image: str) -> None:
    for prefix in ("py", "fe"):
        for n in (1, 2):
            code, _, err = commands.python_run(*on(daemon, "run", "-d", "--net", "none",
                                                   "--name", f"{prefix}-m{n}", image,
                                                   "sleep", "600"))
            assert code == 0, err
    for args in (("tasks", "kill", "-s", "9"), ("tasks", "rm", "-f"), ("containers", "rm")):
        python = commands.python_run(*on(daemon, *args, "py-m1", "nope", "py-m2"))
        frontend = commands.frontend_run(*on(daemon, *args, "fe-m1", "nope", "fe-m2"))
        assert frontend == (python[0], python[1].replace("py-", "fe-"), python[2])
        assert python[0] == 1 and "nope" in python[2]
    assert daemon.client().containers() == []


@pytest.mark.parametrize("args", [
    ("tasks", "kill", "nope"),
    ("tasks", "kill", "-s", "SIGNOPE", "nope"),
    ("tasks", "rm", "-f", "nope"),
    ("t", "delete", "nope"),
    ("containers", "rm", "nope"),
    ("c", "rm", "-f", "--keep-snapshot", "nope", "nope2"),
])
def test_unknown_containers_are_reported_alike(commands: Commands, daemon: RuntimeDaemon,
                                               args: tuple[str, ...]) -> None:
    code, _, err = commands.same(*on(daemon, *args))
    assert code == 1 and "nope" in err


def test_other_namespace_is_honoured(commands: Commands, daemon: RuntimeDaemon,
                                     image: str) -> None:
    code, _, err = commands.python_run(*on(daemon, "run", "-d", "--net", "none", "--name",
                                           "ns-1", image, "sleep", "600"))
    assert code == 0, err
    try:
        for namespace in (("-n", "other"), ("--namespace=other",)):
            code, _, err = commands.same("--address", daemon.address, *namespace, "tasks",
                                         "kill", "ns-1")
            assert code == 1 and "not_found" in err
        code, _, err = commands.same("tasks", "kill", "-s", "0", "ns-1",
                                     env={"MOORAGE_ADDRESS": daemon.address,
                                          "MOORAGE_NAMESPACE": "other"})
        assert code == 1
    finally:
        commands.python_run(*on(daemon, "containers", "rm", "-f", "ns-1"))


@pytest.mark.parametrize("which", ["python_run", "frontend_run"])
def test_run_rm_forwards_sigterm_to_the_container(commands: Commands, daemon: RuntimeDaemon,
                                                  image: str, which: str) -> None:
    exe = commands.frontend if which == "frontend_run" else commands.python
    script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([str(exe), *on(daemon, "run", "--rm", "--net", "none", image, "sh",
                                         "-c", script)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(0.3)  # let the shell reach its loop (the trap is set before "ready")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (42, "got-term\n", "")


# -- packaging -----------------------------------------------------------------------------


def _wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    """A wheel of a copy of the tree's package (pip builds in the source directory)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for name in ("bin", "frontend", "runtime"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    out = tmp_path / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "-w", str(out), str(source)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("moorage-*.whl")
    return wheel


def _install(tmp_path: Path, wheel: Path) -> Path:
    """The wheel installed by pip (without dependencies) into a directory; its ``bin``."""
    target = tmp_path / "installed"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    return target / "bin"


def _works(bin_dir: Path) -> None:
    """``moorage`` and ``moorage-py`` answer (the hot path and the Python CLI's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["PYTHONPATH"] = str(bin_dir.parent)  # the installed package, not the tree
    for exe in ("moorage", "moorage-py"):
        done = subprocess.run([str(bin_dir / exe), "--address", UNREACHABLE, "version"],
                              capture_output=True, text=True, env=env, timeout=120,
                              check=False)
        assert done.returncode == 1 and "is it running?" in done.stderr, done.stderr
        done = subprocess.run([str(bin_dir / exe), "--help"], capture_output=True, text=True,
                              env=env, timeout=120, check=False, cwd="/")
        assert done.returncode == 0 and "usage: moorage" in done.stdout, done.stderr


def test_wheel_holds_the_front_end_for_this_platform(tmp_path: Path) -> None:
    require_binary("cc")
    wheel = _wheel(tmp_path, {})
    assert "-py3-none-linux_" in wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = {n.rsplit("/", 1)[-1]: n for n in archive.namelist() if "/scripts/" in n}
        assert sorted(names) == ["moorage", "moorage-py"]
        assert archive.read(names["moorage"])[:4] == b"\x7fELF"
        assert archive.read(names["moorage-py"]).startswith(b"#!python")
    bin_dir = _install(tmp_path, wheel)
    _works(bin_dir)


def test_build_without_a_compiler_installs_the_python_cli_as_moorage(tmp_path: Path) -> None:
    if shutil.which("false") is None:
        unavailable("no `false` to stand in for a failing compiler")
    wheel = _wheel(tmp_path, {"CC": "false"})
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        scripts = {n.rsplit("/", 1)[-1]: archive.read(n) for n in archive.namelist()
                   if "/scripts/" in n}
    assert sorted(scripts) == ["moorage", "moorage-py"]
    assert scripts["moorage"] == scripts["moorage-py"]
    assert scripts["moorage"].startswith(b"#!python")
    _works(_install(tmp_path, wheel))
