"""A synchronous exec run as the daemon's own child: ``<runtime> exec`` without conmon.

A caller that waits for the exit and takes the output in one piece (CRI
``ExecSync``) needs no monitor: nothing has to outlive the call, nobody attaches
later, no log is kept. So the runtime runs in the foreground with pipes for
stdout and stderr, as containerd's shim runs it: ``runc exec`` (not
``--detach``) stays the process's parent, forwards signals to it and exits with
its status. That saves conmon's double fork, its sync pipes and attach socket,
and the exit-file round trip: most of each ``ExecSync`` (docs/performance.md, 20).

What it gives up, on purpose: the exec is in no record, so a daemon restart
forgets it (the caller's connection is gone with the daemon anyway). Its
process stays in the task's cgroup and dies with the task, as containerd's
ExecSync processes die with their container.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from runtime.api.tasks import (
    STDERR,
    STDOUT,
    ExecOutput,
    ExecRequest,
    Status,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted,
    TaskExit,
)
from runtime.core.errors import InvalidArgument
from runtime.core.identifiers import validate_identifier
from runtime.plugins.runtime.runc.bundle import exec_process_spec, remove_tree
from runtime.plugins.runtime.runc.direct_stream import (
    DirectStream,
    read_pid,
    start_failure,
    start_stream,
)
from runtime.plugins.runtime.runc.queries import TaskTable
from runtime.plugins.runtime.runc.supervisor import Publish
from runtime.plugins.runtime.runc.task import Task

__all__ = ["OUTPUT_LIMIT", "DirectExecs", "exec_to_end", "run_exec"]

#: Bytes kept of stdout and stderr together; the rest is read and dropped.
OUTPUT_LIMIT = 16 << 20


async def run_exec(command: list[str], pid_file: Path, *, timeout: float | None,
                   limit: int = OUTPUT_LIMIT) -> ExecOutput:
    """Run ``command`` (a ``<runtime> exec --pid-file PID_FILE ...`` line) to its end.

    On ``timeout`` the exec'd process and everything it started are killed
    (the runtime then exits too) and the result says ``timed_out``.

    Raises:
        CommandNotFound, CommandNotExecutable, FailedPrecondition: The runtime
            could not start the process (no pid file); the message is its own.
    """
    out: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
    # A plain child watched through a pidfd: no child-watcher thread per exec.
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    stream = DirectStream(process, 0, lambda _: None)
    with anyio.move_on_after(timeout) as scope:
        while (item := await stream.receive()) is not None:
            part = item[1][: max(limit - len(out[STDOUT]) - len(out[STDERR]), 0)]
            out[item[0]].extend(part)
        status = await stream.end()
    if scope.cancelled_caught:
        with anyio.CancelScope(shield=True):
            stream.pid = read_pid(pid_file)
            status = await stream.end(kill=True)
    pid = read_pid(pid_file)
    if not pid and not scope.cancelled_caught:
        raise start_failure(command[0], bytes(out[STDERR]))
    return ExecOutput(pid=pid, exit_status=status, stdout=bytes(out[STDOUT]),
                      stderr=bytes(out[STDERR]), timed_out=scope.cancelled_caught)


class DirectExecs(TaskTable):
    """:class:`TaskTable` plus the execs without a monitor (``RuncRuntime`` builds on it)."""

    runtime_path: str
    publish: Publish

    def _direct(self, namespace: str, container_id: str, request: ExecRequest) -> Task:
        if request.exec_id:
            validate_identifier(request.exec_id, "exec id")
        if request.terminal:
            raise InvalidArgument("a direct exec takes no terminal")
        task = self._get(namespace, container_id)
        task.require(task.init, "exec in", Status.RUNNING)
        return task

    async def exec_sync(self, namespace: str, container_id: str, request: ExecRequest, *,
                        timeout: float | None = None,
                        output_limit: int = OUTPUT_LIMIT) -> ExecOutput:
        """Run an exec to its end as the daemon's child, no monitor (see the module)."""
        if request.stdin:
            raise InvalidArgument("exec_sync takes no stdin")
        task = self._direct(namespace, container_id, request)
        return await exec_to_end(task, request, self._command(namespace), self.publish,
                                 timeout=timeout, limit=output_limit)

    async def exec_stream(self, namespace: str, container_id: str,
                          request: ExecRequest) -> DirectStream:
        """Start an exec without a terminal as the daemon's child, wired to pipes.

        The caller reads and writes the stream and calls its ``end()``.
        """
        task = self._direct(namespace, container_id, request)
        exec_id, workdir = _workdir(task, request)
        spec_file = await anyio.to_thread.run_sync(_prepare, task, request, workdir)
        publish, namespace = self.publish, task.namespace
        async with task.order:
            publish(namespace, "/tasks/exec-added",
                    TaskExecAdded(container_id=task.id, exec_id=exec_id))

        def on_end(status: int) -> None:
            remove_tree(workdir)
            _publish_end(publish, task, exec_id, stream.pid, status)

        try:
            stream = await start_stream(
                [*self._command(namespace), "exec", "--pid-file", str(workdir / "pid"),
                 "--process", str(spec_file), task.id], workdir / "pid", on_end)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, workdir)
            raise
        async with task.order:
            publish(namespace, "/tasks/exec-started",
                    TaskExecStarted(container_id=task.id, exec_id=exec_id, pid=stream.pid))
        return stream

    def _command(self, namespace: str) -> list[str]:
        return [self.runtime_path, *self.oci.global_args(namespace)]


def _workdir(task: Task, request: ExecRequest) -> tuple[str, Path]:
    exec_id = request.exec_id or "direct-" + os.urandom(8).hex()
    # Under the bundle (the state directory), not the record: nothing here must
    # survive a restart, and recovery never sees it.
    return exec_id, task.paths.bundle / "direct-execs" / exec_id


def _prepare(task: Task, request: ExecRequest, workdir: Path) -> Path:
    """Write the exec's OCI process spec (blocking); its path."""
    process_spec = exec_process_spec(task.spec(), request, task.paths.rootfs)
    workdir.mkdir(parents=True, mode=0o700)
    spec_file = workdir / "process.json"
    spec_file.write_text(json.dumps(process_spec))
    return spec_file


def _publish_end(publish: Publish, task: Task, exec_id: str, pid: int, status: int) -> None:
    exited_at = datetime.now(UTC)
    publish(task.namespace, "/tasks/exit", TaskExit(
        container_id=task.id, id=exec_id, pid=pid, exit_status=status, exited_at=exited_at))
    publish(task.namespace, "/tasks/delete", TaskDelete(
        container_id=task.id, id=exec_id, pid=pid, exit_status=status, exited_at=exited_at))


async def exec_to_end(task: Task, request: ExecRequest, runtime: list[str], publish: Publish,
                      *, timeout: float | None, limit: int = OUTPUT_LIMIT) -> ExecOutput:
    """Run ``request`` in ``task`` with ``runtime`` (binary and global flags) to its end.

    The events are the ones a monitored exec sends, in the same order;
    exec-started goes out once the pid is known, that is after the run.
    """
    exec_id, workdir = _workdir(task, request)
    spec_file = await anyio.to_thread.run_sync(_prepare, task, request, workdir)
    namespace, container_id = task.namespace, task.id
    try:
        async with task.order:
            publish(namespace, "/tasks/exec-added",
                    TaskExecAdded(container_id=container_id, exec_id=exec_id))
        pid_file = workdir / "pid"
        command = [*runtime, "exec", "--pid-file", str(pid_file), "--process", str(spec_file),
                   container_id]
        result = await run_exec(command, pid_file, timeout=timeout, limit=limit)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove_tree, workdir)
    async with task.order:
        publish(namespace, "/tasks/exec-started",
                TaskExecStarted(container_id=container_id, exec_id=exec_id, pid=result.pid))
        _publish_end(publish, task, exec_id, result.pid, result.exit_status)
    return result
