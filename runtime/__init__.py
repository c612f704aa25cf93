"""Moorage: a container runtime daemon.

Layout: ``runtime.core`` is the plugin host (config, discovery, graph, event
bus, daemon) and knows nothing about containers; ``runtime.plugins`` holds the
built-in plugins, one package per area; ``runtime.client`` is the typed client
of the admin API; ``runtime.cli`` is the ``moorage`` command; ``runtime.testing``
holds suites plugin authors import.
"""

from __future__ import annotations

__all__ = ["__version__"]

# A literal, read by setuptools at build time: importlib.metadata would cost the
# CLI's fast path about 10 ms on every call.
__version__ = "0.1.0"
