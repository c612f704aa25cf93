"""The seams between plugins: what a plugin may import from another, and what libraries may.

A plugin (a package ``runtime/plugins/<area>/``) imports another plugin only
through that plugin's contract, ``runtime/plugins/<other>/api.py``; the shared
libraries are ``runtime/pkg/`` and the wire types ``runtime/api/``, and the
modules directly under ``runtime/plugins/`` (such as ``types.py``) are for every
plugin author. Every import counts: at module level, under ``TYPE_CHECKING`` and
inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import runtime

ROOT = Path(runtime.__file__).parent
PLUGINS = ROOT / "plugins"


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every absolute module ``path`` imports, with its line; ``from m import n`` gives m.n."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def area_of(path: Path) -> str | None:
    """The plugin package a module belongs to, or None for the modules shared by all plugins."""
    parts = path.relative_to(PLUGINS).parts
    return parts[0] if len(parts) > 1 else None


def crosses_a_seam(area: str | None, imported: str) -> bool:
    """True when ``imported`` reaches into another plugin past its ``api.py``."""
    parts = imported.split(".")
    if parts[:2] != ["runtime", "plugins"] or len(parts) < 4:
        return False  # not a plugin, a module shared by all plugins, or a plugin package itself
    other, module = parts[2], parts[3]
    if not (PLUGINS / other).is_dir():
        return False  # runtime.plugins.types and its kind: shared by all plugins
    return other != area and module != "api"


def violations(paths: Iterator[Path]) -> list[str]:
    """Every import in ``paths`` that crosses a seam, as ``file:line: module``."""
    found = []
    for path in sorted(paths):
        area = area_of(path) if path.is_relative_to(PLUGINS) else None
        for line, imported in imports(path):
            if crosses_a_seam(area, imported):
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {imported}")
    return found


def test_plugins_import_other_plugins_only_through_their_api_module() -> None:
    assert violations(PLUGINS.rglob("*.py")) == []


def test_shared_libraries_import_no_plugin() -> None:
    found = [
        f"{path.relative_to(ROOT.parent)}:{line}: {imported}"
        for path in sorted((ROOT / "pkg").rglob("*.py"))
        for line, imported in imports(path)
        if imported.startswith("runtime.plugins.")
    ]
    assert found == []


def test_wire_types_import_plugins_only_through_their_api_module() -> None:
    assert violations((ROOT / "api").rglob("*.py")) == []


def test_the_rule_sees_a_reach_into_another_plugin() -> None:
    assert crosses_a_seam("images", "runtime.plugins.content.local.store.ContentStore")
    assert crosses_a_seam("gc", "runtime.plugins.metadata.db.Database")
    assert crosses_a_seam(None, "runtime.plugins.snapshots.service.namespaced")
    assert not crosses_a_seam("images", "runtime.plugins.content.api.Follower")
    assert not crosses_a_seam("images", "runtime.plugins.images.service.ImageService")
    assert not crosses_a_seam("events", "runtime.plugins.types.PluginType")
    assert not crosses_a_seam("images", "runtime.pkg.registry.client.RegistryClient")
