"""Moorage installed as a user installs it: a wheel of this tree in a virtual environment.

The development install (``pip install -e .``) is no fair stand-in for the
product: its ``.pth`` finders import ``pathlib`` and more at every interpreter
start, and on this machine the base interpreter's site-packages also holds a
sandbox ``.pth`` that imports certifi at every start. Together they cost
about 100 ms of CPU per process, against 14 ms for the bare interpreter;
each ``moorage`` command pays them, and ``ctr`` pays nothing like them. A
virtual environment has its own site-packages, without either.

The environment is kept in the benchmark cache with its dependencies; each
run rebuilds the wheel from the working tree and reinstalls only Moorage.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.bigimage import CACHE

__all__ = ["venv_bin"]

REPO = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")


def venv_bin() -> Path:
    """The ``bin`` directory of a venv holding a fresh wheel of this tree (byte-compiled)."""
    venv = CACHE / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run(sys.executable, "-m", "venv", str(venv))
    with tempfile.TemporaryDirectory(prefix="mb-wheel-") as out:
        _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, str(REPO))
        wheel = next(Path(out).glob("moorage-*.whl"))
        # Dependencies are installed the first time and kept; Moorage is replaced each run.
        _run(str(python), "-m", "pip", "install", "--quiet", str(wheel))
        _run(str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps",
             str(wheel))
    site = subprocess.run([str(python), "-c", "import runtime, os; "
                           "print(os.path.dirname(runtime.__file__))"],
                          capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    # pip compiles at install; made sure of, as PYTHONDONTWRITEBYTECODE is set here.
    _run(str(python), "-m", "compileall", "-q", site)
    return venv / "bin"
