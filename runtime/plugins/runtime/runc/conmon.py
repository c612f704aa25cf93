"""Start a ``conmon`` monitor for a task's init process or an exec, and talk its pipe protocol.

conmon (``--api-version 1``) forks twice so that it outlives its caller, runs
``<runtime> create`` (or ``exec --detach``), holds the process's stdio, writes
the ``k8s-file`` log, and on exit writes the status to ``<persist>/exit``
before it exits itself. It reports on inherited pipes named by environment
variables:

* ``_OCI_SYNCPIPE``: one JSON line ``{"data": <pid>}`` once the process
  exists, or ``{"data": -1, "message": "<runtime stderr>"}`` on failure;
* ``_OCI_STARTPIPE`` (optional): conmon blocks until it can read from it, once
  at start and, for an exec with ``--exec-attach``, once more right before the
  exec so that a client can attach first;
* ``_OCI_ATTACHPIPE`` (``--exec-attach`` only): ``{"data": 0}`` once the attach
  socket listens.

The calls here block; the runtime runs them in worker threads. Every wait has a
deadline: a monitor that never answers is killed and reported, never waited on.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import msgspec

from runtime.core.errors import (
    CommandNotExecutable,
    CommandNotFound,
    DeadlineExceeded,
    FailedPrecondition,
    MoorageError,
)
from runtime.plugins.runtime.runc.layout import ProcessPaths
from runtime.plugins.runtime.runc.oci import runtime_message

__all__ = ["Monitor", "MonitorOptions", "process_start_time", "start_error"]

# How runc and crun word a process that cannot be executed, after `exec: "CMD": `
# (runc) or in their own words (crun): the command, not Moorage, is at fault.
_COMMAND_MISSING = ("executable file not found", "no such file or directory", "not found")
_COMMAND_UNRUNNABLE = ("permission denied", "exec format error", "is a directory")


def process_start_time(pid: int, *, running: bool = False) -> int:
    """The start time of ``pid`` in clock ticks since boot, 0 if it does not exist.

    With ``running``, also 0 for a zombie: it has exited, only nobody reaped it
    yet (a monitor orphaned by a daemon crash waits for the host's init).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if running and fields[:1] == [b"Z"]:
        return 0
    return int(fields[19]) if len(fields) > 19 else 0


class MonitorOptions(msgspec.Struct):
    """How to start one monitor.

    Attributes:
        conmon: The conmon binary.
        runtime: Absolute path of the OCI runtime binary.
        runtime_args: Global runtime flags (``--root ...``).
        container_id: The runtime's container id.
        bundle: The OCI bundle (init) or the exec's own directory: conmon puts
            its fifos and attach socket there.
        paths: The process's files.
        terminal: Allocate a pseudo-terminal.
        stdin: Keep stdin open for the attach socket.
        exec_spec: For an exec: the OCI process spec file.
        exec_attach: For an exec: wait for :meth:`Monitor.release` before the
            exec, so a client can attach without missing output.
        timeout: Seconds to wait for each answer.
        env: Extra environment for conmon.
        log_path: Where the output goes instead of ``paths.log`` (a CRI
            container's ``log_directory/log_path``).
        sync_log: Sync the log once the process ended (conmon does unless
            told ``--no-sync-log``).
    """

    conmon: str
    runtime: str
    runtime_args: list[str]
    container_id: str
    bundle: Path
    paths: ProcessPaths
    terminal: bool = False
    stdin: bool = False
    exec_spec: Path | None = None
    exec_attach: bool = False
    timeout: float = 60.0
    env: dict[str, str] = msgspec.field(default_factory=dict)
    log_path: Path | None = None
    sync_log: bool = True

    def argv(self) -> list[str]:
        """Conmon's command line."""
        args = [
            self.conmon, "--api-version", "1",
            "--cid", self.container_id, "--cuuid", self.container_id,
            "--name", self.container_id,
            "--runtime", self.runtime,
            "--bundle", str(self.bundle),
            "--container-pidfile", str(self.paths.pid_file),
            "--conmon-pidfile", str(self.paths.monitor_pid_file),
            "--persist-dir", str(self.paths.record),
            "--log-path", f"k8s-file:{self.log_path or self.paths.log}",
            # The attach socket goes in the bundle itself, whatever its path length.
            "--full-attach", "--socket-dir-path", str(self.bundle),
            "--log-level", "error",
        ]  # fmt: skip
        for arg in self.runtime_args:
            args += ["--runtime-arg", arg]
        if self.terminal:
            args.append("--terminal")
        if self.stdin:
            args.append("--stdin")
        if not self.sync_log:
            args.append("--no-sync-log")
        if self.exec_spec is not None:
            args += ["--exec", "--exec-process-spec", str(self.exec_spec)]
            if self.exec_attach:
                args.append("--exec-attach")
        return args


def start_error(text: str) -> FailedPrecondition:
    """The error for a runtime's refusal to create or exec a process.

    Only the runtime's own report about the executable (runc's ``exec: "CMD": ...``,
    crun's ``executable file `CMD` not found`` and ``open executable``) makes a
    :class:`CommandNotFound` or :class:`CommandNotExecutable`; a missing mount
    source or any other failure stays a plain :class:`FailedPrecondition`.
    """
    lowered = text.lower()
    about_command = ""
    if 'exec: "' in lowered:
        about_command = lowered.rpartition('exec: "')[2].partition('": ')[2]
    elif "executable file `" in lowered or "open executable" in lowered:
        about_command = lowered
    if about_command:
        if any(s in about_command for s in _COMMAND_UNRUNNABLE):
            return CommandNotExecutable(text)
        if any(s in about_command for s in _COMMAND_MISSING):
            return CommandNotFound(text)
    return FailedPrecondition(text)


def _parse_json_line(buf: bytes) -> dict[str, object] | None:
    line = buf.split(b"\n", 1)[0].strip()
    if not line:
        return None
    try:
        parsed = json.loads(line)
    except ValueError:
        # conmon does not escape every control character; keep the text readable.
        return {"data": -1, "message": line.decode(errors="replace")}
    return parsed if isinstance(parsed, dict) else None


async def _read_json_line_async(fd: int) -> dict[str, object] | None:
    """As :func:`_read_json_line`, waiting in the event loop (the caller sets the deadline)."""
    import anyio

    buf = b""
    while b"\n" not in buf:
        await anyio.wait_readable(fd)
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return _parse_json_line(buf)


def _read_json_line(fd: int, deadline: float, what: str) -> dict[str, object] | None:
    """One JSON object from a conmon pipe; ``None`` if it closed without writing."""
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"conmon sent no {what} in time")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return _parse_json_line(buf)


class Monitor:
    """One conmon launch: :meth:`spawn`, optionally :meth:`release`, then :meth:`wait_created`.

    ``spawn`` returns once conmon has daemonized (and, with ``exec_attach``, once
    its attach socket listens); ``wait_created`` returns the process's pid.
    """

    def __init__(self, options: MonitorOptions) -> None:
        self.options = options
        self.monitor_pid = 0
        self.monitor_start = 0
        self._sync_r = self._sync_w = -1
        self._start_r = self._start_w = -1
        self._attach_r = self._attach_w = -1

    def spawn(self) -> None:
        """Start conmon and wait until it has daemonized.

        Raises:
            MoorageError: conmon could not start; the message holds its stderr.
            DeadlineExceeded: It did not daemonize in time.
        """
        opts = self.options
        self._sync_r, self._sync_w = os.pipe2(os.O_CLOEXEC)
        env = {**os.environ, **opts.env, "_OCI_SYNCPIPE": str(self._sync_w)}
        keep = [self._sync_w]
        if opts.exec_attach:
            self._start_r, self._start_w = os.pipe2(os.O_CLOEXEC)
            self._attach_r, self._attach_w = os.pipe2(os.O_CLOEXEC)
            env["_OCI_STARTPIPE"] = str(self._start_r)
            env["_OCI_ATTACHPIPE"] = str(self._attach_w)
            keep += [self._start_r, self._attach_w]
            # The first read lets conmon go on; the second one will start the exec.
            os.write(self._start_w, b"0")
        try:
            proc = subprocess.Popen(
                opts.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=keep, env=env, cwd=str(opts.paths.record),
            )  # fmt: skip
        except OSError as exc:
            self.close()
            raise MoorageError(f"cannot run conmon {opts.conmon!r}: {exc.strerror}") from exc
        finally:
            for fd in keep:
                os.close(fd)
            self._sync_w = self._attach_w = self._start_r = -1
        try:
            _, stderr = proc.communicate(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.close()
            raise DeadlineExceeded(f"conmon did not daemonize in {opts.timeout:g}s") from None
        if proc.returncode != 0:
            self.close()
            text = stderr.decode(errors="replace").strip()
            raise MoorageError(f"conmon failed (exit status {proc.returncode}): {text}")
        try:
            self.monitor_pid = int(opts.paths.monitor_pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            self.close()
            raise MoorageError(f"conmon wrote no usable pid file: {exc}") from exc
        self.monitor_start = process_start_time(self.monitor_pid)
        if opts.exec_attach:
            self._expect(self._attach_r, "attach-ready message")

    def release(self) -> None:
        """Let an ``exec_attach`` monitor run the exec now (the client has attached)."""
        if self._start_w >= 0:
            os.write(self._start_w, b"1")
            os.close(self._start_w)
            self._start_w = -1

    def wait_created(self) -> int:
        """The process's pid once the runtime created it (blocking).

        Raises:
            FailedPrecondition: The runtime refused; the message is its own.
            DeadlineExceeded: No answer in time (the monitor is then killed).
        """
        self.release()
        try:
            message = self._expect(self._sync_r, "pid")
        finally:
            self.close()
        return self._created(message)

    async def created(self) -> int:
        """:meth:`wait_created` without holding a worker thread while the runtime works.

        A burst of containers would otherwise park one thread per ``runtime
        create`` in progress.
        """
        import anyio

        self.release()
        try:
            try:
                with anyio.fail_after(self.options.timeout):
                    message = await _read_json_line_async(self._sync_r)
            except TimeoutError:
                self.kill()
                raise DeadlineExceeded("conmon sent no pid in time") from None
            if message is None:
                message = {"data": -1, "message": self._exit_hint()}
        finally:
            self.close()
        return self._created(message)

    def _created(self, message: dict[str, object]) -> int:
        pid = message.get("data")
        if isinstance(pid, int) and pid > 0:
            return pid
        raw = str(message.get("message", "")).strip()
        text = runtime_message(raw.encode()) or raw or "no message"
        binary = os.path.basename(self.options.runtime)
        verb = "exec" if self.options.exec_spec is not None else "create"
        prefix = f"{binary} {verb} failed"
        # runc already says "runc create failed: ..."; crun does not.
        raise start_error(text if text.startswith(prefix) else f"{prefix}: {text}")

    def _expect(self, fd: int, what: str) -> dict[str, object]:
        try:
            message = _read_json_line(fd, time.monotonic() + self.options.timeout, what)
        except DeadlineExceeded:
            self.kill()
            raise
        if message is None:
            # conmon exits without a word when it cannot even start the runtime.
            return {"data": -1, "message": self._exit_hint()}
        return message

    def _exit_hint(self) -> str:
        try:
            code = self.options.paths.monitor_exit.read_text().strip()
        except OSError:
            return "conmon exited without reporting (see the daemon log)"
        return f"the process exited at once with status {code}"

    def kill(self) -> None:
        """SIGKILL the monitor if it is still the process we started."""
        pid = self.monitor_pid
        if pid and process_start_time(pid) == self.monitor_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Close every pipe end still open."""
        for name in ("_sync_r", "_sync_w", "_start_r", "_start_w", "_attach_r", "_attach_w"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
