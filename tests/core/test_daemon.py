"""``runtime.core.daemon``: one daemon per state directory, clean exit on a signal."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.core.daemon import StateLock
from runtime.core.errors import FailedPrecondition, Unavailable
from tests.fixtures.daemon import Daemon


@dataclass(frozen=True)
class Run:
    """What one daemon did between start and a SIGTERM, for several tests to check."""

    daemon: Daemon
    socket_before: bool
    code: int
    stop_seconds: float
    stream_rest: bytes
    log: str


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Start a daemon, serve a request, follow its events, then send SIGTERM."""
    daemon = Daemon(tmp_path_factory.mktemp("sigterm")).start()
    try:
        socket_before = daemon.socket_path.exists()
        daemon.client().namespaces()
        stream = daemon.client().open("GET", "/v1/events", timeout=10)
        started = time.monotonic()
        code = daemon.stop(signal.SIGTERM)
        stop_seconds = time.monotonic() - started
        stream_rest = stream.read()
        yield Run(daemon, socket_before, code, stop_seconds, stream_rest, daemon.log())
    finally:
        daemon.close()


def test_daemon_sigterm_exits_zero_and_removes_the_socket(sigterm_run: Run) -> None:
    assert sigterm_run.socket_before
    assert sigterm_run.code == 0
    assert not sigterm_run.daemon.socket_path.exists()
    assert 'msg="received SIGTERM, shutting down"' in sigterm_run.log
    assert sigterm_run.log.rstrip().endswith('msg="daemon stopped"')
    with pytest.raises(Unavailable):
        sigterm_run.daemon.client().healthz()


def test_daemon_stops_plugins_in_reverse_start_order(sigterm_run: Run) -> None:
    lines = re.findall(
        r'logger=moorage\.host .*msg="plugin (\S+) (ok|stopped)"$',
        sigterm_run.log,
        flags=re.MULTILINE,
    )
    started = [name for name, what in lines if what == "ok"]
    stopped = [name for name, what in lines if what == "stopped"]
    assert started[0] == "events.exchange"
    assert stopped == started[::-1]


def test_daemon_stop_ends_open_event_streams_cleanly(sigterm_run: Run) -> None:
    """A follower of ``/v1/events`` sees the stream end, and does not hold up the shutdown."""
    assert sigterm_run.stream_rest == b""
    assert sigterm_run.stop_seconds < 2.0  # aiohttp would wait 2 s, then cut the stream


def test_daemon_log_is_logfmt_without_access_lines_at_info(sigterm_run: Run) -> None:
    lines = sigterm_run.log.splitlines()
    assert all(re.match(r"^time=\S+Z level=\w+ logger=\S+ ", line) for line in lines), lines
    assert not [line for line in lines if "GET /v1/" in line]


def test_daemon_sigint_exits_zero_and_removes_the_socket(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket_path.exists()
    assert 'msg="received SIGINT, shutting down"' in daemon.log()


def test_daemon_second_on_the_same_state_refuses(daemon: Daemon, tmp_path: Path) -> None:
    assert daemon.proc is not None
    second = Daemon(tmp_path / "second", state=daemon.state)
    try:
        assert second.spawn().wait() == 1
    finally:
        second.close()
    assert f"another moorage daemon (pid {daemon.proc.pid}) holds {daemon.state}/moorage.lock" in (
        second.log()
    )
    assert "stop it or use a different state directory" in second.log()
    # The first daemon is untouched: still serving, socket still there.
    assert daemon.client().healthz().status == "ok"


def test_daemon_after_sigkill_a_new_daemon_takes_over(daemon: Daemon) -> None:
    """The kernel drops the lock of a dead process; the stale socket file is replaced."""
    assert daemon.kill() == -signal.SIGKILL
    assert daemon.socket_path.exists()
    daemon.start()
    assert daemon.client().healthz().status == "ok"


def test_daemon_required_plugin_failing_exits_non_zero_saying_why(tmp_path: Path) -> None:
    extra = (
        'required_plugins = ["metadata.sqlite"]\n'
        '[plugins."metadata.sqlite"]\nsynchronous = "SOMETIMES"\n'
    )
    d = Daemon(tmp_path, extra)
    try:
        assert d.spawn().wait() == 1
    finally:
        d.close()
    assert (
        "daemon failed to start: required plugin metadata.sqlite error: ValueError: "
        "synchronous must be FULL, NORMAL or EXTRA, not 'SOMETIMES'"
    ) in d.log()
    assert not d.socket_path.exists()


def test_daemon_invalid_config_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    d = Daemon(tmp_path, '[plugins."events.exchange"]\nbufer_size = 1\n')
    try:
        assert d.spawn().wait() == 1
    finally:
        d.close()
    assert f"{d.config_path}: [plugins.\\\"events.exchange\\\"] unknown key 'bufer_size'" in d.log()


def test_daemon_optional_plugin_failing_still_serves(tmp_path: Path) -> None:
    with Daemon(tmp_path, '[plugins."metadata.sqlite"]\nsynchronous = "SOMETIMES"\n') as d:
        plugins = {f"{p.type}.{p.id}": p for p in d.client().plugins()}
        assert plugins["metadata.sqlite"].status == "error"
        assert plugins["api.namespaces"].status == "skip"
        assert plugins["api.namespaces"].reason.startswith(
            "requires metadata.sqlite, which is error: ValueError: synchronous must be"
        )
        assert plugins["server.http"].status == "ok"


def test_state_lock_names_the_holder(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(FailedPrecondition) as info:
            second.acquire()
        assert str(info.value) == (
            f"another moorage daemon (pid {os.getpid()}) holds {tmp_path}/moorage.lock; "
            "stop it or use a different state directory"
        )
    finally:
        first.release()
    second.acquire()
    second.release()
