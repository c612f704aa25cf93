"""``runtime.core.discovery``: a broken plugin package is a reportable error, never a crash.

Each test writes fake installed distributions (``*.dist-info`` with ``METADATA`` and
``entry_points.txt``, plus the plugin module) into ``tmp_path`` and puts it on
``sys.path``, as flake8's finder tests do: no pip needed.
"""

from __future__ import annotations

import copy
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest

from runtime.core.config import DaemonConfig
from runtime.core.discovery import (
    ENTRY_POINT_GROUP,
    Discovery,
    LoadFailure,
    PluginSource,
    discover,
    find_entry_points,
)
from runtime.core.host import PluginHost, PluginRecord, PluginStatus
from runtime.core.registration import Registration

PREFIX = "fake-"

GOOD = """
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import Registration

async def init(ctx):
    return "{name}"

@hookimpl
def moorage_plugins():
    yield Registration(type="{type}", id="{id}", init=init, api_version={api_version})
"""


class Site:
    """A directory on ``sys.path`` holding fake distributions and their modules."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def dist(
        self,
        name: str,
        modules: dict[str, str],
        *,
        version: str = "1.0",
        group: str = ENTRY_POINT_GROUP,
    ) -> None:
        """A distribution ``fake-<name>`` with one entry point per module (named like it)."""
        info = self.path / f"{PREFIX}{name}-{version}.dist-info"
        info.mkdir()
        info.joinpath("METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {PREFIX}{name}\nVersion: {version}\n"
        )
        eps = "".join(f"{module} = {module}\n" for module in modules)
        info.joinpath("entry_points.txt").write_text(f"[{group}]\n{eps}")
        for module, source in modules.items():
            self.path.joinpath(f"{module}.py").write_text(textwrap.dedent(source))

    def good(self, name: str, plugin: str, *, api_version: int = 1, module: str = "") -> None:
        """A distribution with one working plugin ``plugin`` (``type.id``)."""
        type_, _, id_ = plugin.partition(".")
        code = GOOD.format(name=plugin, type=type_, id=id_, api_version=api_version)
        self.dist(name, {module or f"mo_{name.replace('-', '_')}": code})


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    path = tmp_path / "site"
    path.mkdir()
    before = set(sys.modules)
    # syspath_prepend also clears importlib's caches, metadata's path cache included.
    monkeypatch.syspath_prepend(str(path))
    yield Site(path)
    for name in set(sys.modules) - before:
        if name.startswith("mo_"):
            del sys.modules[name]


def mine(found: Discovery) -> Discovery:
    """Only what the fake distributions contributed (the real install is on sys.path too)."""
    return Discovery(
        [(r, s) for r, s in found.registrations if s.distribution.startswith(PREFIX)],
        [f for f in found.failures if f.source.distribution.startswith(PREFIX)],
    )


def failure(found: Discovery) -> LoadFailure:
    (only,) = mine(found).failures
    return only


async def records(tmp_path: Path, found: Discovery) -> dict[str, PluginRecord]:
    """Start and stop the discovered plugins; return their records while running."""
    config = DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    async with PluginHost(config, found).running() as plugins:
        return {name: copy.copy(rec) for name, rec in plugins.records.items()}


# -- finding -----------------------------------------------------------------------


def test_find_entry_points_lists_distribution_and_version_without_importing(site: Site) -> None:
    site.dist("lazy", {"mo_lazy": "raise RuntimeError('imported too early')"}, version="2.5")
    found = [s for s, _ in find_entry_points() if s.distribution.startswith(PREFIX)]
    assert found == [PluginSource("fake-lazy", "2.5", "mo_lazy", "mo_lazy")]
    assert "mo_lazy" not in sys.modules


def test_find_entry_points_ignores_other_groups(site: Site) -> None:
    site.dist("other", {"mo_other": ""}, group="console_scripts")
    assert not [s for s, _ in find_entry_points() if s.distribution.startswith(PREFIX)]


def test_find_entry_points_is_sorted_by_distribution(site: Site) -> None:
    site.good("zeta", "z.one")
    site.good("alpha", "a.one")
    site.good("mid", "m.one")
    found = [s.distribution for s, _ in find_entry_points() if s.distribution.startswith(PREFIX)]
    assert found == ["fake-alpha", "fake-mid", "fake-zeta"]


def test_find_entry_points_reads_the_group_as_importlib_metadata_does(site: Site) -> None:
    site.dist("attr", {"mo_attr": "class Holder:\n    plugin = 'the attribute'\n"})
    info = site.path / "fake-attr-1.0.dist-info"
    info.joinpath("entry_points.txt").write_text(
        "[console_scripts]\nx = mo_attr:nope\n\n"
        f"# a comment\n[{ENTRY_POINT_GROUP}]\n"
        "dotted = mo_attr : Holder.plugin [extra]\n"
    )
    ((source, ep),) = [f for f in find_entry_points() if f[0].distribution == "fake-attr"]
    assert (source.entry_point, source.value) == ("dotted", "mo_attr : Holder.plugin [extra]")
    assert ep.load() == "the attribute"
    from importlib import metadata

    (dist,) = metadata.distributions(path=[str(site.path)])
    (theirs,) = dist.entry_points.select(group=ENTRY_POINT_GROUP)
    assert (theirs.name, theirs.value) == (ep.name, ep.value)


def test_builtin_plugins_use_the_same_entry_point_group() -> None:
    builtins = {s.value for s, _ in find_entry_points() if s.distribution == "moorage"}
    assert {
        "runtime.plugins.events.plugin",
        "runtime.plugins.metadata.plugin",
        "runtime.plugins.api.plugin",
    } <= builtins


# -- loading -----------------------------------------------------------------------


def test_discover_collects_registrations_with_their_source(site: Site) -> None:
    site.good("greeter", "greeter.basic")
    found = mine(discover())
    assert found.failures == []
    [(reg, source)] = found.registrations
    assert isinstance(reg, Registration)
    assert reg.name == "greeter.basic"
    assert source == PluginSource("fake-greeter", "1.0", "mo_greeter", "mo_greeter")


def test_discover_import_error_is_a_failure_not_a_crash(site: Site) -> None:
    site.good("fine", "fine.one")
    site.dist("broken", {"mo_broken": "raise RuntimeError('no libfoo.so')"})
    found = discover()
    assert failure(found) == LoadFailure(
        PluginSource("fake-broken", "1.0", "mo_broken", "mo_broken"),
        "import of mo_broken failed: RuntimeError: no libfoo.so",
    )
    assert [r.name for r, _ in mine(found).registrations] == ["fine.one"]


def test_discover_system_exit_on_import_is_a_failure(site: Site) -> None:
    site.dist("exits", {"mo_exits": "import sys\nsys.exit(3)"})
    assert failure(discover()).error == "import of mo_exits failed: SystemExit: 3"


def test_discover_missing_module_is_a_failure(site: Site) -> None:
    site.dist("ghost", {})
    info = site.path / "fake-ghost-1.0.dist-info" / "entry_points.txt"
    info.write_text(f"[{ENTRY_POINT_GROUP}]\nghost = mo_ghost_missing\n")
    assert failure(discover()).error == (
        "import of mo_ghost_missing failed: ModuleNotFoundError: No module named 'mo_ghost_missing'"
    )


def test_discover_misspelled_hook_fails_that_module_only(site: Site) -> None:
    site.good("fine", "fine.one")
    site.dist(
        "typo",
        {
            "mo_typo": """
        from runtime.core.hookspecs import hookimpl

        @hookimpl
        def moorage_plugin():
            return []
    """
        },
    )
    found = discover()
    error = failure(found).error
    assert error.startswith("unknown hook 'moorage_plugin' in plugin <module 'mo_typo'")
    assert [r.name for r, _ in mine(found).registrations] == ["fine.one"]


def test_discover_reports_every_module_with_a_misspelled_hook(site: Site) -> None:
    """pluggy's check_pending stops at the first; discovery must keep looking."""
    for name, hook in (("typo-a", "moorage_plugin"), ("typo-b", "moorage_pluginz")):
        site.dist(
            name,
            {
                f"mo_{name.replace('-', '_')}": f"""
            from runtime.core.hookspecs import hookimpl

            @hookimpl
            def {hook}():
                return []
        """
            },
        )
    failures = mine(discover()).failures
    assert [f.source.distribution for f in failures] == ["fake-typo-a", "fake-typo-b"]
    assert [f.error.split(" in plugin ")[0] for f in failures] == [
        "unknown hook 'moorage_plugin'",
        "unknown hook 'moorage_pluginz'",
    ]


def test_discover_hook_raising_is_a_failure(site: Site) -> None:
    site.good("fine", "fine.one")
    site.dist(
        "raises",
        {
            "mo_raises": """
        from runtime.core.hookspecs import hookimpl

        @hookimpl
        def moorage_plugins():
            raise RuntimeError("cannot declare")
    """
        },
    )
    found = discover()
    assert failure(found).error == "moorage_plugins hook raised RuntimeError: cannot declare"
    assert [r.name for r, _ in mine(found).registrations] == ["fine.one"]


def test_discover_hook_raising_system_exit_is_a_failure(site: Site) -> None:
    site.dist(
        "exits",
        {
            "mo_hook_exits": """
        import sys
        from runtime.core.hookspecs import hookimpl

        @hookimpl
        def moorage_plugins():
            sys.exit("bye")
    """
        },
    )
    assert failure(discover()).error == "moorage_plugins hook raised SystemExit: bye"


def test_discover_invalid_registration_is_a_failure(site: Site) -> None:
    site.dist(
        "badname",
        {
            "mo_badname": """
        from runtime.core.hookspecs import hookimpl
        from runtime.core.registration import Registration

        async def init(ctx):
            return None

        @hookimpl
        def moorage_plugins():
            yield Registration(type="greeter", id="Basic", init=init)
    """
        },
    )
    assert failure(discover()).error == (
        "moorage_plugins hook raised ValueError: plugin id 'Basic' must match "
        "^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$"
    )


def test_discover_non_registration_is_a_failure(site: Site) -> None:
    site.dist(
        "wrong",
        {
            "mo_wrong": """
        from runtime.core.hookspecs import hookimpl

        @hookimpl
        def moorage_plugins():
            return ["greeter.basic"]
    """
        },
    )
    assert failure(discover()).error == "moorage_plugins yielded non-Registration 'greeter.basic'"


def test_discover_module_without_hooks_contributes_nothing(site: Site) -> None:
    site.dist("empty", {"mo_empty": "VALUE = 1\n"})
    assert mine(discover()) == Discovery()


# -- what the host makes of it -------------------------------------------------------


async def test_duplicate_plugin_across_distributions_is_an_error_naming_both(
    site: Site, tmp_path: Path
) -> None:
    site.good("first", "greeter.basic")
    site.good("second", "greeter.basic")
    site.good("fine", "fine.one")
    found = mine(discover())
    assert [s.distribution for _, s in found.registrations] == [
        "fake-fine",
        "fake-first",
        "fake-second",
    ]
    recs = await records(tmp_path, found)
    assert recs["greeter.basic"].status == PluginStatus.ERROR
    assert recs["greeter.basic"].reason == (
        "greeter.basic is provided by more than one distribution: fake-first 1.0, fake-second 1.0"
    )
    assert recs["fine.one"].status == PluginStatus.OK


async def test_incompatible_api_version_is_an_error_naming_both_versions(
    site: Site, tmp_path: Path
) -> None:
    site.good("future", "greeter.future", api_version=7)
    recs = await records(tmp_path, mine(discover()))
    assert recs["greeter.future"].status == PluginStatus.ERROR
    assert recs["greeter.future"].reason == (
        "built for plugin API version 7, but this Moorage serves version(s) 1"
    )


async def test_load_failure_is_listed_as_a_plugin_in_error(site: Site, tmp_path: Path) -> None:
    site.dist("broken", {"mo_broken2": "raise ImportError('needs libfoo')"}, version="0.3")
    recs = await records(tmp_path, mine(discover()))
    [rec] = [r for r in recs.values() if r.type == "entrypoint"]
    assert (rec.id, rec.status, rec.distribution, rec.version) == (
        "mo_broken2",
        PluginStatus.ERROR,
        "fake-broken",
        "0.3",
    )
    assert rec.reason == "import of mo_broken2 failed: ImportError: needs libfoo"


async def test_load_failures_with_the_same_entry_point_name_are_all_listed(
    site: Site, tmp_path: Path
) -> None:
    for name in ("one", "two"):
        module = f"mo_same_{name}"
        site.dist(name, {module: f"raise ImportError('{name} is broken')"})
        eps = site.path / f"fake-{name}-1.0.dist-info" / "entry_points.txt"
        eps.write_text(f"[{ENTRY_POINT_GROUP}]\nplugin = {module}\n")
    recs = await records(tmp_path, mine(discover()))
    listed = sorted((r.id, r.distribution, r.reason) for r in recs.values())
    assert listed == [
        ("plugin", "fake-one", "import of mo_same_one failed: ImportError: one is broken"),
        ("plugin", "fake-two", "import of mo_same_two failed: ImportError: two is broken"),
    ]


def _hooks_of(pm: pluggy.PluginManager, module: object) -> list[tuple[str, object]]:
    return sorted(((caller.name, impl.function) for caller in pm.get_hookcallers(module) or ()
                   for impl in caller.get_hookimpls() if impl.plugin is module),
                  key=lambda pair: pair[0])


def test_discovery_registers_the_hooks_pluggy_would_find() -> None:
    """The manager that passes over non-callable names finds what pluggy's own finds."""
    import types

    from runtime.core.discovery import ENTRY_POINT_GROUP, _plugin_manager, find_entry_points
    from runtime.core.hookspecs import PROJECT, MoorageSpecs, hookimpl

    odd = types.ModuleType("odd_plugin")

    def plugins() -> list[Registration]:
        return []

    moorage_plugins = hookimpl(plugins)
    odd.moorage_plugins = moorage_plugins  # type: ignore[attr-defined]
    odd.alias = moorage_plugins  # type: ignore[attr-defined] # not a hook name: pluggy's call
    odd.number = 3  # type: ignore[attr-defined]
    odd.Klass = type("Klass", (), {"moorage_plugins": moorage_plugins})  # type: ignore[attr-defined]
    modules = [odd, *(ep.load() for _, ep in find_entry_points(ENTRY_POINT_GROUP))]
    ours = _plugin_manager()
    theirs = pluggy.PluginManager(PROJECT)
    theirs.add_hookspecs(MoorageSpecs)
    for i, module in enumerate(modules):
        ours.register(module, name=str(i))
        theirs.register(module, name=str(i))
        assert _hooks_of(ours, module) == _hooks_of(theirs, module)
    assert _hooks_of(ours, odd) == [("alias", moorage_plugins),
                                    ("moorage_plugins", moorage_plugins)]
