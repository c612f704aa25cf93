"""Where the CLI user's Docker ``config.json`` is, found with :mod:`os` alone.

``moorage pull`` looks for stored credentials on every call. Where there is no
file (most build machines), :mod:`runtime.cli.docker_config` and what it
imports to read one (``json``, ``pathlib``, ``subprocess``, the reference
parser) need not be imported at all.
"""

from __future__ import annotations

import os

__all__ = ["config_file"]


def config_file() -> str:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return os.path.join(base if base else os.path.expanduser("~/.docker"), "config.json")
