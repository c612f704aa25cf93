"""The records a daemon defines by the time it answers are msgspec Structs (issue 20).

Creating a dataclass runs ``dataclasses`` code generation (``exec`` of its
``__init__``, ``__eq__``, ``__hash__``...): about 0.6 ms of CPU for a frozen
one against some 0.02 ms for an equivalent ``msgspec.Struct``; the 31 the
daemon used to create at start were some 20 ms of it (docs/performance.md).
``PYTHONVERBOSE`` makes the daemon log every module it imports.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from tests.core.test_idle_memory import imported
from tests.fixtures.daemon import Daemon

#: The daemon's own config, and with the CRI served (its records come at start then).
CONFIGS = {
    "default": ("", "runtime.core.discovery"),
    "cri": ('[plugins."cri.v1"]\nenabled = true\naddress = "{tmp}/cri.sock"\n',
            "runtime.plugins.cri.records"),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_daemon_start_defines_no_dataclass_of_its_own(tmp_path: Path, config: str) -> None:
    extra, expected = CONFIGS[config]
    daemon = Daemon(tmp_path, extra.format(tmp=tmp_path), env={"PYTHONVERBOSE": "1"}).start()
    try:
        daemon.client().healthz()
        ours = sorted(m for m in imported(daemon.log()) if m.split(".")[0] == "runtime")
    finally:
        daemon.close()
    assert expected in ours  # the log does list our modules (and the CRI's when served)
    made = [
        f"{name}.{attr}"
        for name in ours
        for attr, value in vars(importlib.import_module(name)).items()
        if isinstance(value, type) and value.__module__ == name and dataclasses.is_dataclass(value)
    ]
    assert made == []
