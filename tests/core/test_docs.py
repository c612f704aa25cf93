"""Meta-tests: the documentation keeps up with the code it describes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from runtime.core.hookspecs import PROJECT, MoorageSpecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hookspecs() -> dict[str, str]:
    """Every hookspec of :class:`MoorageSpecs` with its signature as the docs write it."""
    found: dict[str, str] = {}
    for name, fn in inspect.getmembers(MoorageSpecs, inspect.isfunction):
        if not hasattr(fn, f"{PROJECT}_spec"):
            continue
        sig = inspect.signature(fn)  # annotations stay strings (postponed evaluation)
        params = ", ".join(p for p in sig.parameters if p != "self")
        returns = sig.return_annotation
        found[name] = f"{name}({params})" + (
            f" -> {returns}" if returns is not inspect.Signature.empty else ""
        )
    return found


def test_hookspecs_are_found() -> None:
    assert hookspecs()["moorage_plugins"] == "moorage_plugins() -> Iterable[Registration]"


def test_every_hook_is_documented() -> None:
    """docs/plugins.md has a section per hook, headed by its exact signature."""
    headings = re.findall(r"^#{2,4} `([^`]+)`\s*$", (DOCS / "plugins.md").read_text(), re.M)
    missing = [sig for sig in hookspecs().values() if sig not in headings]
    assert not missing, f"docs/plugins.md lacks a section headed by: {missing}"


def test_every_documented_hook_exists() -> None:
    """No section describes a hook that is gone or was renamed."""
    text = (DOCS / "plugins.md").read_text()
    documented = re.findall(rf"^#{{2,4}} `({PROJECT}_\w+)\(", text, re.M)
    assert sorted(documented) == sorted(hookspecs())
