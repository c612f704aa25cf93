"""Builds the `moorage` command: the compiled front end, or the Python CLI without a compiler.

The project's metadata lives in pyproject.toml; this file only adds two build
steps to setuptools':

* ``build_scripts`` copies ``bin/moorage-py`` (the Python CLI) and compiles
  ``frontend/moorage.c`` with the system C compiler (``$CC``, default ``cc``)
  into the scripts as ``moorage``. The front end answers the hot commands
  itself and runs ``moorage-py`` from its own directory for everything else.
  If there is no compiler, or it fails, ``moorage`` is a copy of the Python
  script: ``pip install`` still gives a working command everywhere.
* ``bdist_wheel`` tags a wheel that holds the binary for this platform
  (``py3-none-<platform>``: the binary uses no Python ABI).

Editable installs (``pip install -e .``) run the same ``build_scripts``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # setuptools before 70.1
    from wheel.bdist_wheel import bdist_wheel as _bdist_wheel  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
FRONTEND = HERE / "frontend" / "moorage.c"

# setuptools' own (distutils') command: it has no setuptools.command module.
_build_scripts = Distribution().get_command_class("build_scripts")


def _version() -> str:
    text = (HERE / "runtime" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise RuntimeError("runtime/__init__.py has no __version__")
    return found.group(1)


def compile_frontend(target: Path) -> bool:
    """Compile the front end to ``target``; ``False`` (and a note) if that is not possible."""
    command = [*shlex.split(os.environ.get("CC") or "cc"), "-std=c99", "-O2",
               *shlex.split(os.environ.get("CFLAGS", "")),
               f'-DMOORAGE_VERSION="{_version()}"', "-o", str(target), str(FRONTEND),
               *shlex.split(os.environ.get("LDFLAGS", ""))]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"moorage: no compiled front end ({exc}); `moorage` is the Python CLI")
        return False
    if result.returncode != 0:
        print(f"moorage: no compiled front end ({' '.join(command)} exited "
              f"{result.returncode}: {result.stderr.strip()[-2000:]}); "
              "`moorage` is the Python CLI")
        target.unlink(missing_ok=True)
        return False
    return True


class build_scripts(_build_scripts):
    """The scripts, then ``moorage``: the compiled front end or a copy of ``moorage-py``."""

    def run(self) -> None:
        """Copy the scripts, then make ``moorage``."""
        super().run()
        built = Path(self.build_dir)
        target = built / "moorage"
        target.unlink(missing_ok=True)
        compiled = FRONTEND.exists() and compile_frontend(target)
        if not compiled:
            shutil.copy2(built / "moorage-py", target)
        target.chmod(0o755)
        self.distribution.moorage_frontend = compiled  # type: ignore[attr-defined]


class bdist_wheel(_bdist_wheel):
    """A wheel holding the compiled front end is for this platform (any Python 3)."""

    def get_tag(self) -> tuple[str, str, str]:
        """``py3-none-<platform>`` with the binary, else setuptools' tag."""
        if not getattr(self.distribution, "moorage_frontend", False):
            return super().get_tag()
        self.root_is_pure = False
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(cmdclass={"build_scripts": build_scripts, "bdist_wheel": bdist_wheel})
