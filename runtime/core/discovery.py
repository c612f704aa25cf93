"""Phased plugin discovery: find entry points, load each guarded, collect registrations.

Our own loop instead of pluggy's ``load_setuptools_entrypoints``: one package
that raises on import must become a plugin in status ``error``, never a crash.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from functools import reduce
from types import FunctionType, MethodType, ModuleType
from typing import Any

import msgspec
import pluggy

from runtime.core.hookspecs import PROJECT, MoorageSpecs
from runtime.core.registration import Registration

__all__ = [
    "ENTRY_POINT_GROUP",
    "Discovery",
    "EntryPoint",
    "LoadFailure",
    "PluginSource",
    "discover",
]

ENTRY_POINT_GROUP = "moorage.plugins"

log = logging.getLogger("moorage.discovery")


class PluginSource(msgspec.Struct, frozen=True, order=True):
    """Where a plugin module came from: the distribution and its entry point."""

    distribution: str
    version: str
    entry_point: str
    value: str


class LoadFailure(msgspec.Struct, frozen=True):
    """An entry point whose module could not be imported or whose hook failed."""

    source: PluginSource
    error: str


class Discovery(msgspec.Struct):
    """Everything discovery found, in a deterministic order."""

    registrations: list[tuple[Registration, PluginSource]] = msgspec.field(default_factory=list)
    failures: list[LoadFailure] = msgspec.field(default_factory=list)


# ``module[:attr[.attr...]] [extras]``, as importlib.metadata's EntryPoint reads it.
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


class EntryPoint(msgspec.Struct, frozen=True):
    """One entry point of the group: ``value`` names a module and optionally an attribute."""

    name: str
    value: str

    def load(self) -> Any:
        """Import the module (and follow the attribute path), as importlib.metadata does."""
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"malformed entry point value {self.value!r}")
        module = __import__(match["module"], fromlist=["_"])
        return reduce(getattr, (match["attr"] or "").split(".") if match["attr"] else (), module)


def _installed() -> Iterator[str]:
    """The metadata directories (``*.dist-info``, ``*.egg-info``) on ``sys.path``, in order."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue  # not a directory (a zip archive holds no plugins we load)
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                yield os.path.join(entry or ".", name)


def _group_entries(text: str, group: str) -> list[EntryPoint]:
    """The ``name = value`` lines of section ``[group]`` of an ``entry_points.txt``."""
    out: list[EntryPoint] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            inside = line == f"[{group}]"
        elif inside and "=" in line:
            key, _, value = line.partition("=")
            out.append(EntryPoint(key.strip(), value.strip()))
    return out


def _name_version(info: str) -> tuple[str, str]:
    """``Name`` and ``Version`` from the headers of ``METADATA`` (or ``PKG-INFO``)."""
    fields: dict[str, str] = {}
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info, filename), encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        break  # the headers end at the first blank line
                    key, sep, value = line.partition(":")
                    if sep and key in ("Name", "Version"):
                        fields.setdefault(key, value.strip())
        except OSError:
            continue
        break
    return fields.get("Name") or "?", fields.get("Version", "")


def find_entry_points(group: str = ENTRY_POINT_GROUP) -> list[tuple[PluginSource, EntryPoint]]:
    """List the group's entry points with their distribution, sorted, without importing.

    Reads each installed distribution's ``entry_points.txt`` itself instead of
    through ``importlib.metadata``: that package (with ``email``, ``zipfile``,
    ``csv``, ``importlib.resources``) cost about 7 ms of CPU and 0.8 MB resident
    on every daemon start, for the few lines read here. ``METADATA`` is read
    only for the distributions that declare the group.
    """
    found: dict[tuple[str, str], tuple[PluginSource, EntryPoint]] = {}
    for info in _installed():
        try:
            with open(os.path.join(info, "entry_points.txt"), encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        if f"[{group}]" not in text:
            continue
        eps = _group_entries(text, group)
        if not eps:
            continue
        name, version = _name_version(info)
        for ep in eps:
            source = PluginSource(name, version, ep.name, ep.value)
            # An editable install can appear twice on sys.path; keep one.
            found.setdefault((name, ep.name), (source, ep))
    return sorted(found.values(), key=lambda item: item[0])


#: What pluggy can take a hook implementation from (``_static_hook_attr``).
_HOOKABLE = (FunctionType, MethodType, staticmethod, classmethod)
_ABSENT = object()


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, passing over a module's names that cannot be hooks without asking pluggy.

    ``register`` asks :meth:`parse_hookimpl_opts` about every name in
    ``dir(module)``, and pluggy answers each with ``inspect.getattr_static``:
    some 2,300 names over the built-in plugin modules (every class, constant
    and imported name), about 3 ms of every daemon start. A name whose value
    in the module's namespace is no function, method, ``staticmethod`` or
    ``classmethod`` is none of pluggy's hooks either; everything else
    (functions, names ``dir`` lists that the namespace lacks, classes and
    other plugin objects) is pluggy's to judge, as before.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if isinstance(plugin, ModuleType):
            value = vars(plugin).get(name, _ABSENT)
            if value is not _ABSENT and not isinstance(value, _HOOKABLE):
                return None
        return super().parse_hookimpl_opts(plugin, name)


def _plugin_manager() -> pluggy.PluginManager:
    pm = _PluginManager(PROJECT)
    pm.add_hookspecs(MoorageSpecs)
    return pm


def discover(
    group: str = ENTRY_POINT_GROUP, *, modules: Iterable[tuple[PluginSource, ModuleType]] = ()
) -> Discovery:
    """Import every plugin module of ``group`` and collect its registrations.

    Args:
        group: The entry-point group to read.
        modules: Extra already-imported modules (tests), appended after entry points.

    Returns:
        Registrations paired with their source, and one failure per module that
        did not import, misspelled a hook, or whose hook raised.
    """
    result = Discovery()
    loaded: list[tuple[PluginSource, object]] = []
    for source, ep in find_entry_points(group):
        try:
            loaded.append((source, ep.load()))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            log.warning("plugin entry point %s failed to load: %r", source.entry_point, exc)
            result.failures.append(
                LoadFailure(source, f"import of {source.value} failed: {type(exc).__name__}: {exc}")
            )
    loaded.extend(modules)

    pm = _plugin_manager()
    registered: list[tuple[PluginSource, object]] = []
    for source, module in loaded:
        try:
            pm.register(module, name=f"{source.distribution}:{source.entry_point}")
        except (ValueError, pluggy.PluginValidationError) as exc:
            result.failures.append(LoadFailure(source, f"invalid plugin module: {exc}"))
            continue
        registered.append((source, module))
    # check_pending reports one misspelled hook at a time: drop that module,
    # keep the rest, and check again until every hook matches a spec.
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            bad = exc.plugin
            pm.unregister(bad)
            for source, module in list(registered):
                if module is bad:
                    registered.remove((source, module))
                    result.failures.append(LoadFailure(source, str(exc)))

    all_modules = [m for _, m in registered]
    for source, module in registered:
        others = [m for m in all_modules if m is not module]
        caller = pm.subset_hook_caller("moorage_plugins", remove_plugins=others)
        try:
            regs = [r for batch in caller() for r in (batch or ())]
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            result.failures.append(
                LoadFailure(source, f"moorage_plugins hook raised {type(exc).__name__}: {exc}")
            )
            continue
        bad_items = [r for r in regs if not isinstance(r, Registration)]
        if bad_items:
            result.failures.append(
                LoadFailure(source, f"moorage_plugins yielded non-Registration {bad_items[0]!r}")
            )
            continue
        result.registrations.extend((r, source) for r in regs)
    return result
