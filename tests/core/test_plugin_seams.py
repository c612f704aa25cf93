"""The seams between plugins are typed: no ``Any`` for a service, no probing of one.

A plugin holds another plugin's service by that plugin's contract (a
``typing.Protocol`` in its ``api.py``); an optional ability is a Protocol of
its own, asked once with ``isinstance`` when the holder is built. Mypy checks
the contracts; these tests keep the two habits that would slip past it out:
a service handle annotated ``Any`` (mypy accepts anything there), and
``hasattr``/``getattr`` on a service.

A *service handle* is a parameter or annotated attribute with one of the
names in :data:`SERVICE_HANDLES`, the names the plugins use for the services
they hold. Code under ``runtime/plugins/cri/v1`` is generated and not scanned.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import runtime
from runtime.core.proxy import ProxyTarget
from runtime.plugins.diff.api import Stager
from runtime.plugins.diff.walking.plugin import WalkingDiff
from runtime.plugins.metadata.db import Database
from runtime.plugins.snapshots.api import LocalSnapshotter
from runtime.plugins.snapshots.native.snapshotter import NativeSnapshotter
from runtime.plugins.snapshots.proxy.client import ProxySnapshotter
from runtime.plugins.snapshots.service.namespaced import NamespacedSnapshotter

PLUGINS = Path(runtime.__file__).parent / "plugins"
GENERATED = PLUGINS / "cri" / "v1"

#: Names under which plugins hold other plugins' services.
SERVICE_HANDLES = frozenset({
    "backend", "containers", "content", "diff", "events", "exchange", "gc", "images",
    "leases", "metadata", "network", "runtime", "runtimes", "scheduler", "service",
    "snapshots", "snapshotter", "snapshotters", "tasks",
})  # fmt: skip


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PLUGINS.rglob("*.py")):
        if not path.is_relative_to(GENERATED):
            yield path, ast.parse(path.read_text(), str(path))


def _mentions_any(annotation: ast.expr | None) -> bool:
    return annotation is not None and any(
        (isinstance(n, ast.Name) and n.id == "Any")
        or (isinstance(n, ast.Attribute) and n.attr == "Any")
        for n in ast.walk(annotation)
    )


def any_typed_handles(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of every service handle whose annotation involves ``Any``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
                if arg.arg in SERVICE_HANDLES and _mentions_any(arg.annotation):
                    yield arg.lineno, arg.arg
        elif isinstance(node, ast.AnnAssign):
            target = node.target
            name = target.id if isinstance(target, ast.Name) else (
                target.attr if isinstance(target, ast.Attribute) else "")
            if name in SERVICE_HANDLES and _mentions_any(node.annotation):
                yield node.lineno, name


def probed_handles(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of every ``hasattr``/``getattr`` whose object is a service handle."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
            and node.args
        ):
            obj = node.args[0]
            name = obj.id if isinstance(obj, ast.Name) else (
                obj.attr if isinstance(obj, ast.Attribute) else "")
            if name in SERVICE_HANDLES:
                yield node.lineno, name


def test_no_service_handle_in_a_plugin_is_typed_any() -> None:
    found = [
        f"{path.relative_to(PLUGINS)}:{line}: {name}"
        for path, tree in _sources()
        for line, name in any_typed_handles(tree)
    ]
    assert found == []


def test_no_plugin_probes_a_service_with_hasattr_or_getattr() -> None:
    found = [
        f"{path.relative_to(PLUGINS)}:{line}: {name}"
        for path, tree in _sources()
        for line, name in probed_handles(tree)
    ]
    assert found == []


def test_the_scan_sees_an_any_typed_handle_and_a_probe() -> None:
    source = ast.parse(
        "def f(content: Any, snapshots: Callable[[], typing.Any], name: Any) -> None:\n"
        "    self.network: Any = None\n"
        "    hasattr(self.diff, 'stage')\n"
        "    getattr(network, 'attachments', None)\n"
    )
    assert sorted(any_typed_handles(source)) == [(1, "content"), (1, "snapshots"), (2, "network")]
    assert sorted(probed_handles(source)) == [(3, "diff"), (4, "network")]


def test_the_walking_differ_is_a_stager_and_a_plain_applier_is_not(tmp_path: Path) -> None:
    class PlainApplier:
        async def apply(self, desc: object, mounts: object, reader: object) -> object:
            return None

    assert isinstance(WalkingDiff(tmp_path), Stager)
    assert not isinstance(PlainApplier(), Stager)


def test_a_namespaced_snapshotter_names_a_local_backends_directory(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    native = NativeSnapshotter(tmp_path / "native")
    proxy = ProxySnapshotter(
        ProxyTarget(name="remote", type="snapshot", address="unix:///nowhere.sock",
                    path="/nowhere.sock", timeout=1.0))

    def publish(namespace: str, topic: str, event: object) -> None:
        return None

    assert isinstance(native, LocalSnapshotter)
    assert not isinstance(proxy, LocalSnapshotter)
    assert NamespacedSnapshotter("native", native, db, publish).root == str(tmp_path / "native")
    assert NamespacedSnapshotter("remote", proxy, db, publish).root == ""
