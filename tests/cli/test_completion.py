"""Shell completion and the manual page, generated from the parser (no daemon needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.system import unavailable


def generated(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def bash_complete(script: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in ("moorage", *words))
    probe = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; _moorage; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True,
                          timeout=30).stdout.split()


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("bash") is None:
        unavailable("bash missing")
    path = tmp_path_factory.mktemp("completion") / "moorage.bash"
    path.write_text(generated("completion", "bash"))
    return path


def test_bash_completes_commands_subcommands_and_flags(bash_script: Path) -> None:
    assert {"ps", "pull", "pause", "port"} <= set(bash_complete(bash_script, "p"))
    assert "ls" in bash_complete(bash_script, "images", "l")
    assert set(bash_complete(bash_script, "stop", "--t")) == {"--time", "--timeout"}
    assert {"cp", "commit", "create"} <= set(bash_complete(bash_script, "c"))
    assert set(bash_complete(bash_script, "system", "")) >= {"df", "prune"}
    assert "--password-stdin" in bash_complete(bash_script, "login", "--pass")
    # Global options and their values are skipped to find the command.
    assert "--all" in bash_complete(bash_script, "-n", "ns1", "ps", "--a")
    # A container name does not end the command: its flags still complete.
    assert "--signal" in bash_complete(bash_script, "kill", "c1", "--s")


def test_zsh_and_fish_scripts(bash_script: Path) -> None:
    zsh = generated("completion", "zsh")
    assert zsh.startswith("#compdef moorage\n") and "complete -o default -F _moorage" in zsh
    fish = generated("completion", "fish").splitlines()
    assert any(line.startswith("complete -c moorage") and "-a ps " in line for line in fish)
    assert any("__fish_seen_subcommand_from stop" in line and "-l time" in line
               for line in fish)


def test_man_page_documents_every_command() -> None:
    page = generated("man")
    assert page.startswith(".TH MOORAGE 1")
    for command in ("ps", "run", "images ls", "network inspect"):
        assert f".B {command.replace('-', chr(92) + '-')}\n" in page
    assert ".B \\-\\-restart\n" in page
    if shutil.which("man"):
        rendered = subprocess.run(["man", "-l", "-"], input=page, capture_output=True,
                                  text=True, timeout=60, check=False)
        assert rendered.returncode == 0, rendered.stderr
