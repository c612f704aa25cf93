"""``moorage daemon`` starts with Python's cyclic collector paused, and collects again once up.

:mod:`runtime.core.collector`: no collection runs over the start's imports
and plugins; once every plugin has started, what the start
made is frozen and the collector is on again, also after a start that failed.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from runtime.core import collector
from runtime.core import daemon as daemon_module
from tests.fixtures.daemon import Daemon

#: Runs `moorage daemon -c argv[1]` in this process; a thread waits for the first answer on
#: the socket argv[2] and for the end of the start, prints what it saw and sends SIGTERM.
_DRIVER = r"""
import gc, os, signal, socket, sys, threading, time
from runtime.core import collector

collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(1))
at_resume = []
resume = collector.resume
def recording_resume():
    at_resume.append((gc.isenabled(), len(collections)))
    resume()
collector.resume = recording_resume

def probe():
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sys.argv[2])
                s.sendall(b"GET /v1/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            pass
        time.sleep(0.02)
    # The API may answer while a plugin that does not need it is still starting.
    deadline = time.monotonic() + 20
    while not at_resume and time.monotonic() < deadline:
        time.sleep(0.01)
    print("answered", at_resume, gc.isenabled(), gc.get_freeze_count(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

from runtime.cli.main import main
threading.Thread(target=probe, daemon=True).start()
collections.clear()
code = main(["daemon", "-c", sys.argv[1]])
print("exited", code, gc.isenabled(), flush=True)
"""


def test_daemon_start_runs_no_collection_and_collects_again_once_started(
        tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    try:
        proc = daemon.proc = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, str(daemon.config_path), str(daemon.socket_path)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, **daemon.env}, start_new_session=True)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        daemon.close()
    assert out.startswith("answered"), out
    answered, exited = out.splitlines()
    words = answered.split()
    # Paused from the command's start to the plugins': not one collection.
    assert " ".join(words[1:-2]) == "[(False, 0)]"
    assert words[-2] == "True"  # collecting again by the first answer
    assert int(words[-1]) > 10_000  # the start's objects, frozen
    assert exited == "exited 0 True"


def test_daemon_start_that_fails_leaves_the_collector_on(tmp_path: Path) -> None:
    assert gc.isenabled()
    try:
        assert daemon_module.run_daemon(str(tmp_path / "missing.toml")) == 1
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def test_collector_pause_leaves_a_collector_that_was_off_alone() -> None:
    gc.disable()
    try:
        collector.pause()
        collector.resume()
        assert not gc.isenabled()
    finally:
        gc.enable()
    collector.pause()
    collector.pause()  # paused twice (the command, then run_daemon): resumed once
    assert not gc.isenabled()
    try:
        collector.resume()
        assert gc.isenabled()
    finally:
        gc.unfreeze()  # this test process's objects: back to the collector
