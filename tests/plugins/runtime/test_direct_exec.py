"""``run_exec`` and ``start_stream``: a foreground exec's status, output, deadline, failures.

A shell stands in for ``runc exec``: like runc it writes the pid of the
process it runs to ``--pid-file`` and exits with that process's status; it
``exec``s the workload so the pid file names it. Through real runc, the CRI
tests (tests/cri -k exec_sync) drive the same code.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from runtime.api.tasks import STDERR, STDOUT
from runtime.core.errors import CommandNotFound, FailedPrecondition
from runtime.plugins.runtime.runc.conmon import process_start_time
from runtime.plugins.runtime.runc.direct_exec import run_exec
from runtime.plugins.runtime.runc.direct_stream import start_stream


def fake_runtime(pid_file: Path, script: str) -> list[str]:
    """A command that records its pid in ``pid_file`` and becomes ``sh -c script``."""
    return ["sh", "-c", f'echo $$ > {pid_file}; exec sh -c "$0"', script]


def alive(pid: int) -> bool:
    return process_start_time(pid, running=True) != 0


async def test_status_and_both_streams_come_back_apart(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = await run_exec(fake_runtime(pid_file, "echo out; echo err >&2; exit 3"), pid_file,
                            timeout=30)
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 3)
    assert result.pid == int(pid_file.read_text()) and not result.timed_out


async def test_a_signalled_runtime_reports_128_plus_the_signal(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = await run_exec(fake_runtime(pid_file, "kill -9 $$"), pid_file, timeout=30)
    assert result.exit_status == 128 + signal.SIGKILL


async def test_the_deadline_kills_the_whole_process_tree(tmp_path: Path) -> None:
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    script = f"sleep 600 & echo $! > {child_file}; echo started; sleep 601"
    started = time.monotonic()
    result = await run_exec(fake_runtime(pid_file, script), pid_file, timeout=1)
    assert result.timed_out
    assert time.monotonic() - started < 15
    assert result.stdout == b"started\n"
    child = int(child_file.read_text())
    with anyio.fail_after(10):
        while alive(child) or alive(result.pid):
            await anyio.sleep(0.05)


async def test_output_beyond_the_limit_is_read_and_dropped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = await run_exec(fake_runtime(pid_file, "echo err >&2; sleep 0.2; "
                                                   "head -c 3000000 /dev/zero; echo late >&2"),
                            pid_file, timeout=30, limit=1000)
    # The limit counts both streams together, and the 3 MB past it are read (the process is
    # not left blocked on a full pipe) and dropped. Which stream fills it first is the
    # scheduler's: a loaded machine can find both pipes ready at the first read.
    assert (len(result.stdout) + len(result.stderr), result.exit_status) == (1000, 0)
    assert result.stderr in (b"err\n", b"")


async def test_a_background_child_holding_the_pipes_does_not_hold_the_call(
    tmp_path: Path,
) -> None:
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    script = f"sleep 60 & echo $! > {child_file}; echo bye"
    started = time.monotonic()
    try:
        result = await run_exec(fake_runtime(pid_file, script), pid_file, timeout=30)
        assert (result.stdout, result.exit_status) == (b"bye\n", 0)
        assert time.monotonic() - started < 10
    finally:
        os.kill(int(child_file.read_text()), signal.SIGKILL)


async def test_a_runtime_that_never_started_the_process_raises_its_message(
    tmp_path: Path,
) -> None:
    message = ('{"level":"error","msg":"runc exec failed: unable to start container process: '
               'exec: \\"nope\\": executable file not found in $PATH"}')
    command = ["sh", "-c", f"echo '{message}' >&2; exit 1"]
    with pytest.raises(CommandNotFound, match='"nope": executable file not found'):
        await run_exec(command, tmp_path / "pid", timeout=30)
    # Worded by a runtime that does not name itself (crun): the binary's name leads.
    with pytest.raises(FailedPrecondition, match=r"^sh exec failed: container is paused"):
        await run_exec(["sh", "-c", "echo container is paused >&2; exit 1"], tmp_path / "pid",
                       timeout=30)


async def test_a_stream_relays_stdin_and_both_outputs_then_ends_with_the_status(
    tmp_path: Path,
) -> None:
    pid_file, ended = tmp_path / "pid", []
    stream = await start_stream(fake_runtime(pid_file, "cat; echo err >&2; exit 5"), pid_file,
                                ended.append)
    assert stream.pid == int(pid_file.read_text())
    await stream.send(b"hello")
    stream.close_stdin()
    received: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
    with anyio.fail_after(30):
        while (item := await stream.receive()) is not None:
            received[item[0]] += item[1]
        assert await stream.end() == 5
    assert received == {STDOUT: b"hello", STDERR: b"err\n"} and ended == [5]


async def test_ending_a_stream_with_kill_kills_its_process_tree(tmp_path: Path) -> None:
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    script = f"sleep 600 & echo $! > {child_file}; sleep 601"
    stream = await start_stream(fake_runtime(pid_file, script), pid_file, lambda _: None)
    with anyio.fail_after(10):
        while not child_file.exists() or not child_file.read_text().strip():
            await anyio.sleep(0.02)
    with anyio.fail_after(30):
        assert await stream.end(kill=True) == 128 + signal.SIGKILL
        while alive(int(child_file.read_text())):
            await anyio.sleep(0.05)


async def test_a_stream_ends_soon_after_the_exit_despite_a_child_holding_its_pipes(
    tmp_path: Path,
) -> None:
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    stream = await start_stream(fake_runtime(pid_file, f"sleep 60 & echo $! > {child_file}"),
                                pid_file, lambda _: None)
    try:
        with anyio.fail_after(10):
            while await stream.receive() is not None:
                pass
            assert await stream.end() == 0
    finally:
        os.kill(int(child_file.read_text()), signal.SIGKILL)


async def test_a_stream_that_never_started_raises_the_runtime_s_message(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="container is paused"):
        await start_stream(["sh", "-c", "echo container is paused >&2; exit 1"],
                           tmp_path / "pid", lambda _: None)


async def test_a_stream_whose_process_ended_before_the_first_look_still_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The runtime writes the pid file, runs `true` and exits between start_stream's
    # look at the file and its look at the runtime's exit: a started process,
    # not a runtime that failed to start one.
    from runtime.plugins.runtime.runc import direct_stream

    pid_file, looks = tmp_path / "pid", []
    real_read_pid = direct_stream.read_pid

    def read_pid_too_early(path: Path) -> int:
        looks.append(path)
        if len(looks) == 1:
            deadline = time.monotonic() + 10
            while not real_read_pid(path) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.2)  # the runtime exits meanwhile
            return 0
        return real_read_pid(path)

    monkeypatch.setattr(direct_stream, "read_pid", read_pid_too_early)
    ended: list[int] = []
    stream = await start_stream(fake_runtime(pid_file, "echo done"), pid_file, ended.append)
    assert stream.pid == real_read_pid(pid_file)
    output = b""
    with anyio.fail_after(30):
        while (item := await stream.receive()) is not None:
            output += item[1]
        assert await stream.end() == 0
    assert output == b"done\n" and ended == [0]
