"""Moorage: a container runtime daemon.

Layout: ``runtime.core`` is the plugin host (config, discovery, graph, event
bus, daemon) and knows nothing about containers; ``runtime.plugins`` holds the
built-in plugins, one package per area; ``runtime.client`` is the typed client
of the admin API; ``runtime.cli`` is the ``moorage`` command; ``runtime.testing``
holds suites plugin authors import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # Resolved lazily: importlib.metadata costs time the CLI's fast path
    # should not pay unless the version is actually asked for.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("moorage")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    raise AttributeError(name)
