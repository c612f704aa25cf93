"""``runtime.pkg.which``: the daemon's program look-up answers as :func:`shutil.which`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runtime.pkg.which import which


def _program(directory: Path, name: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_which_answers_as_shutil_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _program(first, "plain", 0o644)  # not executable: passed over
    _program(second, "plain")
    _program(first, "both")
    _program(second, "both")
    (first / "adir").mkdir()  # a directory is no program
    _program(second, "adir")
    names = ["plain", "both", "adir", "missing", str(second / "plain"), str(first / "plain"),
             str(first / "adir"), "./nowhere", "sh"]
    for path in (f"{first}:{second}:{first}", f"{second}", "", f"{first}::{second}", None):
        if path is None:
            monkeypatch.delenv("PATH", raising=False)
        else:
            monkeypatch.setenv("PATH", path)
        for name in names:
            assert which(name) == shutil.which(name), (path, name)


def test_which_finds_the_first_runnable_in_path_order(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _program(tmp_path / "a", "tool", 0o644)
    expected = _program(tmp_path / "b", "tool")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert which("tool") == str(expected)
