"""conmon's command line as :class:`MonitorOptions` builds it (no conmon is run)."""

from __future__ import annotations

from pathlib import Path

from runtime.plugins.runtime.runc.conmon import MonitorOptions
from runtime.plugins.runtime.runc.layout import ProcessPaths


def options(**changes: object) -> MonitorOptions:
    record = Path("/nonexistent/record")
    base = MonitorOptions(conmon="/usr/bin/conmon", runtime="/usr/sbin/runc", runtime_args=[],
                          container_id="c1", bundle=Path("/nonexistent/bundle"),
                          paths=ProcessPaths(Path("/nonexistent/bundle"), record))
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_the_log_is_synced_at_the_exit_unless_told_otherwise() -> None:
    assert "--no-sync-log" not in options().argv()
    assert "--no-sync-log" in options(sync_log=False).argv()
