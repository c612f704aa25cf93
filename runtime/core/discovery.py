"""Phased plugin discovery: find entry points, load each guarded, collect registrations.

Our own loop instead of pluggy's ``load_setuptools_entrypoints``: one package
that raises on import must become a plugin in status ``error``, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from runtime.core.hookspecs import PROJECT, MoorageSpecs
from runtime.core.registration import Registration

__all__ = ["ENTRY_POINT_GROUP", "Discovery", "LoadFailure", "PluginSource", "discover"]

ENTRY_POINT_GROUP = "moorage.plugins"

log = logging.getLogger("moorage.discovery")


@dataclass(frozen=True, order=True)
class PluginSource:
    """Where a plugin module came from: the distribution and its entry point."""

    distribution: str
    version: str
    entry_point: str
    value: str


@dataclass(frozen=True)
class LoadFailure:
    """An entry point whose module could not be imported or whose hook failed."""

    source: PluginSource
    error: str


@dataclass
class Discovery:
    """Everything discovery found, in a deterministic order."""

    registrations: list[tuple[Registration, PluginSource]] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)


def find_entry_points(group: str = ENTRY_POINT_GROUP) -> list[tuple[PluginSource, Any]]:
    """List the group's entry points with their distribution, sorted, without importing."""
    found: dict[tuple[str, str], tuple[PluginSource, Any]] = {}
    for dist in metadata.distributions():
        # Metadata is read for every distribution anyway; filter on the group first.
        eps = [ep for ep in dist.entry_points if ep.group == group]
        if not eps:
            continue
        name = dist.metadata["Name"] or "?"
        for ep in eps:
            source = PluginSource(name, dist.version, ep.name, ep.value)
            # An editable install can appear twice on sys.path; keep one.
            found.setdefault((name, ep.name), (source, ep))
    return sorted(found.values(), key=lambda item: item[0])


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
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
