"""The API socket is bound before the plugins start: early clients wait, none is refused.

``moorage daemon`` listens on ``[api] address`` right after reading its
configuration (``runtime.core.listeners``); the API server takes the socket
over once every plugin has started. These tests drive a real daemon.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.core import listeners
from runtime.core.errors import InvalidArgument
from tests.fixtures.daemon import Daemon


def first_answer(path: Path, timeout: float = 30.0) -> bytes:
    """Connect as soon as the socket file exists, send one request, return the answer's head."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the socket never appeared"
        time.sleep(0.001)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))  # never refused: the socket listens from the start
        sock.sendall(b"GET /v1/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        return sock.recv(64)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_a_client_connecting_at_once_is_answered_once_the_daemon_serves(daemon: Daemon) -> None:
    daemon.spawn()
    assert first_answer(daemon.socket_path).startswith(b"HTTP/1.1 200")
    assert daemon.socket_path.stat().st_mode & 0o777 == 0o660


def test_a_daemon_that_cannot_start_leaves_no_socket(tmp_path: Path) -> None:
    failing = Daemon(tmp_path, 'required_plugins = ["metadata.sqlite"]\n'
                              'disabled_plugins = ["metadata.sqlite"]\n')
    try:
        failing.spawn()
        assert failing.wait() == 1
        assert "required plugin metadata.sqlite cannot start" in failing.log()
        assert not failing.socket_path.exists()
    finally:
        failing.close()


def test_without_the_api_server_the_early_socket_is_closed(tmp_path: Path) -> None:
    """No client waits for an answer that would never come."""
    headless = Daemon(tmp_path, 'required_plugins = ["metadata.sqlite"]\n'
                                'disabled_plugins = ["server.http"]\n')
    try:
        headless.spawn()
        deadline = time.monotonic() + 30
        while "daemon started" not in headless.log():
            assert time.monotonic() < deadline and headless.running, headless.log()
            time.sleep(0.05)
        assert not headless.socket_path.exists()
    finally:
        headless.close()


def test_bind_unix_replaces_a_stale_socket_and_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    stale = listeners.bind_unix(path)
    stale.close()  # a dead daemon's socket file stays behind
    fresh = listeners.bind_unix(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
    finally:
        fresh.close()
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    with pytest.raises(InvalidArgument, match="exists and is not a socket"):
        listeners.bind_unix(other)
    assert other.read_text() == "keep me"
