"""A streamed exec without a terminal, run as the daemon's own child (see :mod:`.direct_exec`).

The runtime runs in the foreground with three pipes; without a terminal runc
hands them to the process as they are, so its output is read straight from
them, as from conmon's attach socket, and written to its stdin. It lives as long
as the stream's caller: the CRI streaming server, whose client connection a
daemon restart ends anyway.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio

from runtime.api.tasks import STDERR, STDOUT
from runtime.core.errors import FailedPrecondition
from runtime.plugins.runtime.runc.conmon import start_error
from runtime.plugins.runtime.runc.oci import runtime_message

__all__ = ["DirectStream", "kill_tree", "read_pid", "start_failure", "start_stream"]

_RECV = 65536
#: How often the start waits for the pid file (runc writes it once the process runs).
_PID_POLL = 0.002
#: After the process exits, how long a background child may hold its pipes open.
_DRAIN_GRACE = 1.0
#: After a kill, how long the runtime may take to exit before it is killed too.
_KILL_GRACE = 10.0


async def _readable_any(fds: list[int]) -> None:
    if len(fds) == 1:
        await anyio.wait_readable(fds[0])
        return
    async with anyio.create_task_group() as tg:

        async def one(fd: int) -> None:
            await anyio.wait_readable(fd)
            tg.cancel_scope.cancel()

        for fd in fds:
            tg.start_soon(one, fd)


class DirectStream:
    """The stdio of a foreground exec (an ``AttachStream``) and its end.

    Args:
        process: The runtime, started with pipes for stdout, stderr and,
            optionally, stdin.
        pid: The exec'd process (from the runtime's pid file), 0 if not known yet.
        on_end: Called once with the exit status (the caller's events and cleanup).
    """

    def __init__(self, process: subprocess.Popen[bytes], pid: int,
                 on_end: Callable[[int], object]) -> None:
        assert process.stdout and process.stderr
        self.pid = pid
        self._process = process
        self._on_end = on_end
        self._outputs = {STDOUT: process.stdout.fileno(), STDERR: process.stderr.fileno()}
        for fd in self._outputs.values():
            os.set_blocking(fd, False)
        if process.stdin is not None:
            os.set_blocking(process.stdin.fileno(), False)
        self._pidfd = os.pidfd_open(process.pid)
        self.exit_status: int | None = None
        self._drain_until: float | None = None

    async def receive(self) -> tuple[int, bytes] | None:
        """The next ``(stream, data)`` of output, or ``None`` once it ended.

        It ends when both pipes close or, once the process exited, when a
        background child left holding them has had a grace period to let go.
        """
        while self._outputs:
            for channel, fd in list(self._outputs.items()):
                try:
                    data = os.read(fd, _RECV)
                except BlockingIOError:
                    continue
                if data:
                    return channel, data
                del self._outputs[channel]
            if not self._outputs:
                break
            if self._drain_until is None:
                await _readable_any([*self._outputs.values(), self._pidfd])
                if self._process.poll() is not None:
                    self._drain_until = anyio.current_time() + _DRAIN_GRACE
                continue
            with anyio.move_on_after(self._drain_until - anyio.current_time()):
                await _readable_any(list(self._outputs.values()))
                continue
            break
        return None

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin."""
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            raise FailedPrecondition("the process's stdin is closed")
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(stdin.fileno(), view):]
            except BlockingIOError:
                await anyio.wait_writable(stdin.fileno())
            except OSError as exc:
                raise FailedPrecondition(f"cannot write to the process's stdin: {exc}") from exc

    def close_stdin(self) -> None:
        """Close the process's stdin: it reads end-of-file."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()

    def close(self) -> None:
        """Drop the pipes (the process then sees end-of-file and broken pipes)."""
        self.close_stdin()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()
        self._outputs.clear()

    async def end(self, *, kill: bool = False) -> int:
        """Wait for the exit (killing the process tree first with ``kill``); its status.

        Cancelled while waiting, it holds on to everything: call it again.
        """
        if self.exit_status is not None:
            return self.exit_status
        if kill and self.pid > 0:
            await anyio.to_thread.run_sync(kill_tree, self.pid)
        elif kill:  # the process never started: end the runtime itself
            self._process.kill()
        with anyio.move_on_after(_KILL_GRACE if kill else None) as scope:
            await anyio.wait_readable(self._pidfd)
        if scope.cancelled_caught:
            self._process.kill()
            with anyio.CancelScope(shield=True):
                await anyio.wait_readable(self._pidfd)
        status = self._process.wait()
        os.close(self._pidfd)
        self.close()
        self.exit_status = status if status >= 0 else 128 - status
        self._on_end(self.exit_status)
        return self.exit_status


async def start_stream(command: list[str], pid_file: Path,
                       on_end: Callable[[int], object]) -> DirectStream:
    """Start ``command`` (``<runtime> exec --pid-file PID_FILE ...``); return once it runs.

    Raises:
        CommandNotFound, CommandNotExecutable, FailedPrecondition: The runtime
            could not start the process; the message is its own.
    """
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    # The exit is watched through a pidfd, which does not reap: a runtime that
    # wrote the pid file and exited with its short-lived process in between
    # two looks still has a pid for DirectStream's own pidfd, and the pid
    # file is read once more before the exit counts as a failure to start.
    pidfd = os.pidfd_open(process.pid)
    try:
        while not (pid := read_pid(pid_file)):
            if _exited(pidfd):
                if pid := read_pid(pid_file):
                    break
                _, stderr = await anyio.to_thread.run_sync(process.communicate)
                raise start_failure(command[0], stderr)
            await anyio.sleep(_PID_POLL)
        return DirectStream(process, pid, on_end)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        raise
    finally:
        os.close(pidfd)


def _exited(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` has exited (it is not reaped)."""
    return bool(select.select([pidfd], [], [], 0)[0])


def read_pid(pid_file: Path) -> int:
    """The pid the runtime wrote (it renames the file into place), 0 before that."""
    try:
        return int(pid_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def start_failure(runtime: str, stderr: bytes) -> Exception:
    """The error for a runtime that exited without starting the process."""
    text = runtime_message(stderr) or stderr.decode(errors="replace").strip() or "no message"
    prefix = f"{os.path.basename(runtime)} exec failed"
    # runc already says "runc exec failed: ..."; crun does not.
    return start_error(text if text.startswith(prefix) else f"{prefix}: {text}")


def _children(pid: int) -> Iterable[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                yield from (int(c) for c in (task / "children").read_text().split())
    except OSError:
        return


def _session(pid: int) -> int | None:
    """The session id of ``pid`` (``/proc/<pid>/stat``), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Fields after the command's closing parenthesis: state ppid pgrp session ...
        return int(stat[stat.rindex(")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def _session_members(leader: int) -> list[int]:
    """The other processes of the session ``leader`` leads, orphans included.

    The runtime makes an exec's process a session leader; what it started in the
    background and left (``(cmd &)``, reparented to the container's PID 1) is no
    longer its descendant but is still in its session. Nothing when ``leader``
    leads no session (or is gone): its pid says nothing about others' sessions then.
    """
    if _session(leader) != leader:
        return []
    members = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != leader \
                    and _session(int(entry.name)) == leader:
                members.append(int(entry.name))
    return members


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, every descendant and the rest of the session it leads.

    Children first found, then killed; the session's members (see
    :func:`_session_members`) and their descendants too.
    """
    seen: list[int] = []
    todo = [pid, *_session_members(pid)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        todo.extend(c for c in _children(current) if c not in seen)
    for victim in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
