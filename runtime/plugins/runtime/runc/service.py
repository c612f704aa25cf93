"""``RuncRuntime``: the service of ``runtime.runc`` and ``runtime.crun``.

It implements :class:`runtime.plugins.runtime.api.Runtime`: the calls that
drive the state machine are here (create, start, attach, exec, kill, pause,
resume, delete), the read-only and tuning ones in :mod:`.queries`. State
changes and their events happen under the task's ``order`` lock (see
:mod:`.task`); the exits themselves come from the :class:`~.supervisor.Supervisor`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from runtime.api.tasks import (
    KEEP_CGROUP_PARENTS_ANNOTATION,
    LOG_PATH_ANNOTATION,
    LOG_UNSYNCED_ANNOTATION,
    ExecRequest,
    ExitStatus,
    ProcessState,
    Status,
    TaskCreate,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted,
    TaskIO,
    TaskPaused,
    TaskResumed,
    TaskStart,
    TaskState,
)
from runtime.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    MoorageError,
    NotFound,
)
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_identifier, validate_namespace
from runtime.plugins.network.api import Network, setup_task_network, teardown_task_network
from runtime.plugins.runtime.runc.attach import AttachConnection, connect_attach
from runtime.plugins.runtime.runc.bundle import (
    exec_process_spec,
    prepare_bundle,
    remove_tree,
    root_mounts,
    teardown_bundle,
)
from runtime.plugins.runtime.runc.cgroups import remove_empty
from runtime.plugins.runtime.runc.conmon import Monitor, MonitorOptions
from runtime.plugins.runtime.runc.direct_exec import DirectExecs
from runtime.plugins.runtime.runc.layout import ProcessRecord, TaskRecord, write_durably
from runtime.plugins.runtime.runc.oci import OciRuntime
from runtime.plugins.runtime.runc.process import Process
from runtime.plugins.runtime.runc.supervisor import Publish, Supervisor
from runtime.plugins.runtime.runc.task import Task
from runtime.plugins.snapshots.api import Mount

__all__ = ["RuncRuntime"]

log = logging.getLogger("moorage.runtime.runc")

class RuncRuntime(DirectExecs):
    """Tasks run by one OCI runtime binary, each supervised by conmon.

    Args:
        name: The plugin's full name (``runtime.runc``).
        oci: The runtime's command line.
        runtime_path: Absolute path of the runtime binary (handed to conmon).
        conmon: The conmon binary.
        root: Persistent per-task records (``<root>/<ns>/<id>``).
        state: Bundles (``<state>/<ns>/<id>``).
        publish: ``publish(namespace, topic, event)``.
        supervisor: Watches processes and publishes their exits.
        timeout: Seconds for each monitor or runtime call.
        network: Returns the running ``network.*`` service, or ``None`` (optional).
    """

    def __init__(self, *, name: str, oci: OciRuntime, runtime_path: str, conmon: str,
                 root: Path, state: Path, publish: Publish, supervisor: Supervisor,
                 timeout: float = 60.0,
                 network: Callable[[], Network | None] | None = None) -> None:
        super().__init__(name, oci, root, state)
        self.network = network or (lambda: None)
        self.runtime_path = runtime_path
        self.conmon = conmon
        self.publish = publish
        self.supervisor = supervisor
        self.timeout = timeout
        self._reserved: set[tuple[str, str]] = set()
        supervisor.on_lost = self._kill_unsupervised

    # -- create -------------------------------------------------------------------

    async def create(self, namespace: str, container_id: str, spec: dict[str, Any],
                     rootfs: Sequence[Mount], *, stdin: bool = False) -> TaskState:
        """Mount the root filesystem, write the bundle and start a monitor running ``create``.

        Raises:
            AlreadyExists: The task exists.
            InvalidArgument: No root filesystem, or an unknown user.
            FailedPrecondition: The runtime refused; the message is the runtime's.
        """
        validate_namespace(namespace)
        validate_identifier(container_id, "container id")
        key = (namespace, container_id)
        if key in self.tasks or key in self._reserved:
            raise AlreadyExists(f"task {container_id!r} already exists")
        self._reserved.add(key)
        try:
            return await self._create(namespace, container_id, spec, root_mounts(spec, rootfs),
                                      stdin)
        finally:
            self._reserved.discard(key)

    async def _create(self, namespace: str, container_id: str, spec: dict[str, Any],
                      rootfs: list[Mount], stdin: bool) -> TaskState:
        paths = self.paths(namespace, container_id)
        now = datetime.now(UTC)
        terminal = bool(spec.get("process", {}).get("terminal", False))
        record = TaskRecord(
            namespace=namespace, container_id=container_id, runtime=self.name, rootfs=rootfs,
            cgroups_path=str(spec.get("linux", {}).get("cgroupsPath", "")),
            keep_cgroup_parents=spec.get("annotations", {}).get(
                KEEP_CGROUP_PARENTS_ANNOTATION) == "true",
            init=ProcessRecord(terminal=terminal, stdin=stdin, created_at=now), created_at=now,
        )  # fmt: skip
        task = Task(record, paths)

        def fresh_record() -> None:
            # A leftover of an earlier task with this id (cleaned at startup) must not leak in.
            remove_tree(paths.record)
            paths.record.mkdir(parents=True, mode=0o700)
            task.save()

        await anyio.to_thread.run_sync(fresh_record)
        options = self._monitor_options(namespace, container_id, task.init, paths.bundle)
        annotations = spec.get("annotations", {})
        log_path = annotations.get(LOG_PATH_ANNOTATION, "")
        if log_path:
            options.log_path = Path(log_path)
        options.sync_log = annotations.get(LOG_UNSYNCED_ANNOTATION) != "true"
        monitor = Monitor(options)
        try:
            spec = await setup_task_network(self.network(), namespace, container_id, spec,
                                            paths.bundle)
            await anyio.to_thread.run_sync(prepare_bundle, paths, spec, rootfs)
            # Crash tests: rootfs mounted in the bundle, no runtime container yet.
            fault_point("task.create.before-runtime")
            await anyio.to_thread.run_sync(monitor.spawn)
            pid = await monitor.created()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard(task, monitor)
            raise
        # Crash tests: the runtime created the container; the record still says "creating".
        fault_point("task.create.after-runtime")
        record.init.pid = pid
        record.init.monitor_pid = monitor.monitor_pid
        record.init.monitor_start = monitor.monitor_start
        record.state = "created"
        await anyio.to_thread.run_sync(task.save)
        self.tasks[(namespace, container_id)] = task
        async with task.order:
            self.publish(namespace, "/tasks/create", TaskCreate(
                container_id=container_id, bundle=str(paths.bundle), rootfs=rootfs,
                io=TaskIO(stdin=stdin, terminal=terminal, log=str(paths.init.log)), pid=pid))
        self.supervisor.watch(task, task.init)
        return task.state(self.name)

    def _monitor_options(self, namespace: str, container_id: str, process: Process,
                         bundle: Path, exec_spec: Path | None = None,
                         exec_attach: bool = False) -> MonitorOptions:
        return MonitorOptions(
            conmon=self.conmon, runtime=self.runtime_path,
            runtime_args=self.oci.global_args(namespace), container_id=container_id,
            bundle=bundle, paths=process.paths, terminal=process.record.terminal,
            stdin=process.record.stdin, exec_spec=exec_spec, exec_attach=exec_attach,
            timeout=self.timeout,
        )  # fmt: skip

    async def _discard(self, task: Task, monitor: Monitor | None = None) -> None:
        """Undo a failed create: runtime state, monitor, mounts, files."""
        if monitor is not None:
            monitor.kill()
        try:
            await self.oci.delete(task.namespace, task.id, force=True)
        except Exception:
            log.debug("runtime delete of %s failed", task.id, exc_info=True)
        await teardown_task_network(self.network(), task.namespace, task.id)
        await anyio.to_thread.run_sync(teardown_bundle, task.paths)
        await anyio.to_thread.run_sync(remove_tree, task.paths.record)

    # -- start, attach, exec --------------------------------------------------------

    async def start(self, namespace: str, container_id: str, exec_id: str = "") -> ProcessState:
        """Start the init process (``runtime start``) or an exec (a monitor running ``exec``)."""
        state, _ = await self._start(namespace, container_id, exec_id, connect=False)
        return state

    async def attach(self, namespace: str, container_id: str, exec_id: str = "", *,
                     start: bool = False) -> AttachConnection:
        """Connect to a process's stdio; ``start`` starts it once connected: no output is lost."""
        if start:
            _, connection = await self._start(namespace, container_id, exec_id, connect=True)
            assert connection is not None
            return connection
        process = self._get(namespace, container_id).process(exec_id)
        if process.status == Status.CREATED and process.id:
            raise FailedPrecondition(f"exec {exec_id!r} is not started; attach with start")
        return await anyio.to_thread.run_sync(connect_attach, process.paths.bundle)

    async def _start(self, namespace: str, container_id: str, exec_id: str,
                     connect: bool) -> tuple[ProcessState, AttachConnection | None]:
        task = self._get(namespace, container_id)
        async with task.lock:
            process = task.process(exec_id)
            task.require(process, "start", Status.CREATED)
            if process.id:
                return await self._start_exec(task, process, connect)
            connection = None
            if connect:
                connection = await anyio.to_thread.run_sync(connect_attach, task.paths.bundle)
            try:
                async with task.order:
                    await self.oci.start(namespace, container_id)
                    # Crash tests: running, but the record still says created.
                    fault_point("task.start.after-runtime")
                    process.record.started = True
                    process.status = Status.RUNNING
                    await anyio.to_thread.run_sync(task.save)
                    self.publish(namespace, "/tasks/start",
                                 TaskStart(container_id=container_id, pid=process.record.pid))
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            return process.state(), connection

    async def _start_exec(self, task: Task, process: Process,
                          connect: bool) -> tuple[ProcessState, AttachConnection | None]:
        task.require(task.init, "start an exec in", Status.RUNNING)
        monitor = Monitor(self._monitor_options(
            task.namespace, task.id, process, process.paths.bundle,
            exec_spec=process.paths.process_spec, exec_attach=connect))
        connection = None
        async with task.order:
            try:
                await anyio.to_thread.run_sync(monitor.spawn)
                if connect:
                    connection = await anyio.to_thread.run_sync(connect_attach,
                                                                process.paths.bundle)
                pid = await monitor.created()
            except BaseException:
                monitor.kill()
                if connection is not None:
                    connection.close()
                raise
            process.record.pid = pid
            process.record.monitor_pid = monitor.monitor_pid
            process.record.monitor_start = monitor.monitor_start
            process.record.started = True
            process.status = Status.RUNNING
            await anyio.to_thread.run_sync(task.save_exec, process)
            self.publish(task.namespace, "/tasks/exec-started", TaskExecStarted(
                container_id=task.id, exec_id=process.id, pid=pid))
        self.supervisor.watch(task, process)
        return process.state(), connection

    async def exec(self, namespace: str, container_id: str, request: ExecRequest) -> ProcessState:
        """Add an exec process to a running task; it runs once started."""
        validate_identifier(request.exec_id, "exec id")
        task = self._get(namespace, container_id)
        async with task.lock:
            task.require(task.init, "exec in", Status.RUNNING)
            if request.exec_id in task.execs:
                raise AlreadyExists(f"exec {request.exec_id!r} already exists in task "
                                    f"{container_id!r}")
            spec = await anyio.to_thread.run_sync(task.spec)
            process_spec = await anyio.to_thread.run_sync(exec_process_spec, spec, request,
                                                          task.paths.rootfs)
            paths = task.paths.exec(request.exec_id)
            record = ProcessRecord(id=request.exec_id, terminal=request.terminal,
                                   stdin=request.stdin, spec=process_spec,
                                   created_at=datetime.now(UTC))
            process = Process(container_id, record, paths)

            def write() -> None:
                paths.bundle.mkdir(parents=True, exist_ok=True, mode=0o711)
                paths.record.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_durably(paths.process_spec, _json(process_spec), sync=False)
                task.save_exec(process)

            await anyio.to_thread.run_sync(write)
            task.execs[request.exec_id] = process
            async with task.order:
                self.publish(namespace, "/tasks/exec-added", TaskExecAdded(
                    container_id=container_id, exec_id=request.exec_id))
            return process.state()

    # -- signals and freezing ---------------------------------------------------------

    async def kill(self, namespace: str, container_id: str, signal: int, *,
                   all: bool = False, exec_id: str = "") -> None:
        """Signal the init process (``all``: every process) or an exec.

        Raises:
            NotFound: The process has already exited (as containerd says).
        """
        task = self._get(namespace, container_id)
        process = task.process(exec_id)
        if process.status == Status.STOPPED:
            raise NotFound(f"process {process.event_id!r} already finished")
        if process is task.init:
            if not all and process.signal_directly(signal):
                return
            await self.oci.kill(namespace, container_id, signal, all=all)
            return
        task.require(process, "signal", Status.RUNNING)
        if process.monitor_alive():
            try:
                os.kill(process.record.pid, signal)
            except ProcessLookupError:
                raise NotFound(f"process {process.event_id!r} already finished") from None

    async def pause(self, namespace: str, container_id: str) -> None:
        """Freeze a running task."""
        task = self._get(namespace, container_id)
        async with task.lock:
            task.require(task.init, "pause", Status.RUNNING)
            async with task.order:
                await self.oci.pause(namespace, container_id)
                task.init.status = Status.PAUSED
                self.publish(namespace, "/tasks/paused", TaskPaused(container_id=container_id))

    async def resume(self, namespace: str, container_id: str) -> None:
        """Thaw a paused task."""
        task = self._get(namespace, container_id)
        async with task.lock:
            task.require(task.init, "resume", Status.PAUSED)
            async with task.order:
                await self.oci.resume(namespace, container_id)
                if task.init.status == Status.PAUSED:
                    task.init.status = Status.RUNNING
                self.publish(namespace, "/tasks/resumed", TaskResumed(container_id=container_id))

    async def _kill_unsupervised(self, task: Task, process: Process) -> None:
        """SIGKILL a process whose monitor is gone (best effort)."""
        try:
            if process is task.init:
                await self.oci.kill(task.namespace, task.id, signal.SIGKILL, all=True)
            elif process.record.pid in await self.oci.ps(task.namespace, task.id):
                # Only a pid still in the task's cgroup can be the exec's.
                os.kill(process.record.pid, signal.SIGKILL)
        except (MoorageError, ProcessLookupError):
            pass

    # -- delete ---------------------------------------------------------------------

    async def delete(self, namespace: str, container_id: str, exec_id: str = "") -> ExitStatus:
        """Delete a stopped or never-started task (or exec) and release everything it held."""
        task = self._get(namespace, container_id)
        if exec_id:
            return await self._delete_exec(task, exec_id)
        async with task.lock:
            task.require(task.init, "delete", Status.CREATED, Status.STOPPED)
            if task.init.status == Status.CREATED:
                # Never started: kill it and let the watcher record the exit as usual.
                await self.oci.delete(namespace, container_id, force=True)
                await self._await_exit(task.init)
            for process in task.execs.values():
                if process.status != Status.CREATED:
                    await self._await_exit(process)
            await self.supervisor.flush(task)
            with anyio.CancelScope(shield=True):
                await self._delete_and_unmount(task, namespace, container_id)
                # Crash tests: gone from the runtime and unmounted, record still there.
                fault_point("task.delete.after-runtime")
                await anyio.to_thread.run_sync(self._release, task)
                await teardown_task_network(self.network(), namespace, container_id)
            fault_point("task.delete.after-release")
            self.tasks.pop((namespace, container_id), None)
            result = task.init.exit_status()
            async with task.order:
                self.publish(namespace, "/tasks/delete", TaskDelete(
                    container_id=container_id, id=container_id, pid=result.pid,
                    exit_status=result.exit_status, exited_at=result.exited_at))
            return result

    async def _await_exit(self, process: Process) -> None:
        try:
            with anyio.fail_after(self.timeout):
                await process.exited.wait()
        except TimeoutError:
            raise DeadlineExceeded(
                f"process {process.event_id!r} did not exit within {self.timeout:g}s") from None

    async def _delete_and_unmount(self, task: Task, namespace: str, container_id: str) -> None:
        """``runc delete`` alongside the root filesystem's unmount and the bundle's removal.

        Neither needs the other: the process is gone, runc reads its own state
        directory, not the bundle, and the unmount waits on the kernel, not on
        runc. The task's record (what recovery goes by) is removed only after
        both, by :meth:`_release`. Errors are raised as they are, not as a group.
        """
        failures: list[BaseException] = []

        async def unmount() -> None:
            try:
                await anyio.to_thread.run_sync(teardown_bundle, task.paths)
            except Exception as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(unmount)
            try:
                await self.oci.delete(namespace, container_id, force=True)
            except Exception as exc:
                failures.insert(0, exc)
        if failures:
            raise failures[0]

    @staticmethod
    def _release(task: Task) -> None:
        teardown_bundle(task.paths)  # done already, unless that failed: idempotent
        if task.record.cgroups_path.startswith("/"):
            levels = (0 if task.record.keep_cgroup_parents
                      else task.record.cgroups_path.strip("/").count("/"))
            remove_empty(task.cgroups, levels)
        remove_tree(task.paths.record)

    async def _delete_exec(self, task: Task, exec_id: str) -> ExitStatus:
        async with task.lock:
            process = task.process(exec_id)
            task.require(process, "delete", Status.CREATED, Status.STOPPED)
            paths = process.paths

            def remove() -> None:
                remove_tree(paths.bundle)
                remove_tree(paths.record)

            await anyio.to_thread.run_sync(remove)
            task.execs.pop(exec_id, None)
            result = process.exit_status()
            async with task.order:
                self.publish(task.namespace, "/tasks/delete", TaskDelete(
                    container_id=task.id, id=exec_id, pid=result.pid,
                    exit_status=result.exit_status, exited_at=result.exited_at))
            return result


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
