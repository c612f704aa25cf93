"""Garbage collection through a real daemon: the API, the CLI, sync lease deletes, and SIGKILL.

The crash test kills the daemon for real (``MOORAGE_FAULTS=gc.after-sweep``)
between the record sweep and the disk phase, then checks what a restarted
daemon finds and finishes.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from runtime.api.types import ContentInfo
from runtime.cli.main import main
from runtime.core.errors import MoorageError
from runtime.core.faults import ENV_VAR
from runtime.plugins.gc.api import LABEL_ROOT
from tests.fixtures.daemon import Daemon

# No startup run and no mutation trigger: collections happen when a test asks.
QUIET = '[plugins."gc.scheduler"]\nstartup_delay = "0"\nmutation_threshold = 0\n'


def blob(
    daemon: Daemon,
    data: bytes,
    labels: dict[str, str] | None = None,
    lease: str | None = None,
    namespace: str = "default",
) -> str:
    info = daemon.client(namespace).write_content(
        f"ref-{len(data)}-{data[:8]!r}", data, commit=True, labels=labels, lease=lease
    )
    assert isinstance(info, ContentInfo)
    return info.digest


def blobs_on_disk(daemon: Daemon) -> set[str]:
    directory = daemon.root / "content.local" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in directory.iterdir()}


def content_records(daemon: Daemon) -> set[str]:
    with sqlite3.connect(daemon.db_path) as conn:
        return {r[0] for r in conn.execute("SELECT digest FROM content")}


def test_gc_endpoint_and_cli_report_what_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Daemon(tmp_path, QUIET) as daemon:
        kept = blob(daemon, b"kept", {LABEL_ROOT: "1"})
        garbage = blob(daemon, b"garbage" * 100)
        client = daemon.client()
        client.prepare_snapshot("native", "scratch")

        report = client.gc()
        assert report.removed["content"].records == 1
        assert report.removed["content"].disk == 1
        assert report.removed["content"].bytes == 700
        assert report.removed["snapshots/native"].records == 1
        assert report.removed["snapshots/native"].disk == 1
        assert report.pause_seconds < report.total_seconds
        assert blobs_on_disk(daemon) == {kept}
        assert garbage not in content_records(daemon)

        blob(daemon, b"more garbage")
        assert main(["--address", daemon.address, "gc"]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].split() == ["KIND", "RECORDS", "ON", "DISK", "BYTES"]
        assert lines[1].split() == ["content", "1", "1", "12", "B"]
        assert lines[2].startswith("freed 12 B; pause ")
        assert main(["--address", daemon.address, "gc"]) == 0
        assert capsys.readouterr().out.startswith("nothing to remove\n")


def test_sync_lease_delete_waits_for_the_collection(tmp_path: Path) -> None:
    with Daemon(tmp_path, QUIET) as daemon:
        client = daemon.client()
        client.create_lease("pull")
        digest = blob(daemon, b"leased layer", lease="pull")
        client.delete_lease("pull", sync=True)
        assert digest not in blobs_on_disk(daemon)
        assert digest not in content_records(daemon)


def test_sigkill_between_sweep_and_disk_is_finished_after_restart(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, QUIET, env={ENV_VAR: "gc.after-sweep"})
    with daemon:
        kept = blob(daemon, b"kept", {LABEL_ROOT: "1"})
        garbage = blob(daemon, b"garbage")
        client = daemon.client()
        client.prepare_snapshot("native", "scratch")
        with pytest.raises(MoorageError):
            client.gc()
        assert daemon.proc is not None
        assert daemon.proc.wait(10) == -signal.SIGKILL
        # Killed after the record sweep: records gone, bytes still there.
        assert content_records(daemon) == {kept}
        assert blobs_on_disk(daemon) == {kept, garbage}
        native = daemon.root / "snapshotter.native" / "snapshots"
        assert len(list(native.iterdir())) == 1

    daemon.env.clear()
    with daemon:
        # Nothing points at a missing blob, before and after the next collection.
        assert content_records(daemon) <= blobs_on_disk(daemon)
        report = daemon.client().gc()
        assert report.removed["content"].records == 0
        assert report.removed["content"].disk == 1
        assert report.removed["snapshots/native"].disk == 1
        assert blobs_on_disk(daemon) == {kept} == content_records(daemon)
        assert list(native.iterdir()) == []


def test_a_lease_delete_leads_to_a_collection_by_itself(tmp_path: Path) -> None:
    """Default settings: the scheduler hears ``/leases/delete`` on the bus and collects."""
    with Daemon(tmp_path) as daemon:
        client = daemon.client()
        client.create_lease("pull")
        digest = blob(daemon, b"leased", lease="pull")
        client.delete_lease("pull")
        deadline = time.monotonic() + 5
        while digest in blobs_on_disk(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert digest not in blobs_on_disk(daemon)
        assert digest not in content_records(daemon)
