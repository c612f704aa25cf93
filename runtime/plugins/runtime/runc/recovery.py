"""Re-attach to tasks after a daemon restart, and clean what dead ones left behind.

For every ``task.json`` under the runtime's root:

* a task that never finished being created is undone completely;
* each process with a live monitor is watched again and stays controllable;
* each process whose monitor is gone gets its real exit status from the file
  conmon wrote (255 if there is none, as containerd reports), recorded before
  it is published (held by the supervisor until somebody listens for it, or
  its grace period ends);
* a task whose init process has exited releases its runtime state, mounts and
  monitor files at once; its record stays so that it can still be queried,
  waited for and deleted.

Bundles and runtime containers that no record claims are removed last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio.to_thread

from runtime.api.tasks import Status
from runtime.plugins.runtime.runc.bundle import remove_tree, teardown_bundle
from runtime.plugins.runtime.runc.layout import ProcessRecord, TaskRecord, read_record
from runtime.plugins.runtime.runc.process import Process
from runtime.plugins.runtime.runc.service import RuncRuntime
from runtime.plugins.runtime.runc.task import Task

__all__ = ["recover"]

log = logging.getLogger("moorage.runtime.runc")


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


async def recover(runtime: RuncRuntime) -> None:
    """Load every task of ``runtime`` from disk (at plugin start, before serving)."""
    for ns_dir in _subdirs(runtime.root):
        for task_dir in _subdirs(ns_dir):
            await _recover_task(runtime, ns_dir.name, task_dir.name)
    await _remove_orphans(runtime)


async def _recover_task(runtime: RuncRuntime, namespace: str, container_id: str) -> None:
    paths = runtime.paths(namespace, container_id)
    record = read_record(paths.task_file, TaskRecord)
    if record is None or record.state != "created":
        log.info("task %s was not fully created before the restart; removing it", container_id,
                 extra={"namespace": namespace})
        await runtime.oci.delete(namespace, container_id, force=True)
        await anyio.to_thread.run_sync(teardown_bundle, paths)
        await anyio.to_thread.run_sync(remove_tree, paths.record)
        return
    task = Task(record, paths)
    for exec_id in paths.exec_ids():
        exec_record = read_record(paths.exec_file(exec_id), ProcessRecord)
        if exec_record is not None:
            task.execs[exec_id] = Process(container_id, exec_record, paths.exec(exec_id))
    for process in task.processes():
        await _recover_process(runtime, task, process)
    if task.init.status == Status.CREATED:
        await _settle_start(runtime, task)
    if task.init.status == Status.STOPPED:
        # Dead while we were away: free runtime state, cgroup, mounts and monitor files now.
        await runtime.oci.delete(namespace, container_id, force=True)
        await anyio.to_thread.run_sync(teardown_bundle, paths)
    elif task.init.status == Status.RUNNING:
        state = await runtime.oci.state(namespace, container_id)
        if state is not None and state.get("status") == "paused":
            task.init.status = Status.PAUSED
    runtime.tasks[(namespace, container_id)] = task
    log.info("task %s recovered: %s", container_id, task.init.status,
             extra={"namespace": namespace})


async def _settle_start(runtime: RuncRuntime, task: Task) -> None:
    """Believe the runtime when a crash came between ``runtime start`` and the record.

    The record says "not started", but the user process may run already: left as
    created, the task could be neither started (the runtime refuses) nor deleted
    (it is not stopped).
    """
    state = await runtime.oci.state(task.namespace, task.id)
    status = state.get("status") if state is not None else None
    if status not in ("running", "paused"):
        return
    log.info("task %s was started just before the restart", task.id,
             extra={"namespace": task.namespace})
    task.init.record.started = True
    task.init.status = Status.RUNNING
    await anyio.to_thread.run_sync(task.save)


async def _recover_process(runtime: RuncRuntime, task: Task, process: Process) -> None:
    if process.load_exit():
        if process.exit is not None and not process.exit.published:
            runtime.supervisor.defer(task, process)
        return
    if process.id and not process.record.started:
        return  # an exec that was added but never started: nothing ran
    if process.monitor_alive():
        runtime.supervisor.watch(task, process)
        return
    exit_status, exited_at = await runtime.supervisor.final_status(task, process)
    await anyio.to_thread.run_sync(process.record_exit, exit_status, exited_at)
    runtime.supervisor.defer(task, process)


async def _remove_orphans(runtime: RuncRuntime) -> None:
    """Bundles and runtime containers without a task record: leftovers of crashes."""
    for ns_dir in _subdirs(runtime.state_dir):
        for bundle in _subdirs(ns_dir):
            if (ns_dir.name, bundle.name) not in runtime.tasks:
                log.info("removing orphaned bundle %s", bundle)
                await runtime.oci.delete(ns_dir.name, bundle.name, force=True)
                await anyio.to_thread.run_sync(
                    teardown_bundle, runtime.paths(ns_dir.name, bundle.name))
    for ns_dir in _subdirs(runtime.oci.root):
        for state in await runtime.oci.list(ns_dir.name):
            container_id = str(state.get("id", ""))
            if container_id and (ns_dir.name, container_id) not in runtime.tasks:
                log.info("removing orphaned runtime container %s", container_id,
                         extra={"namespace": ns_dir.name})
                await runtime.oci.delete(ns_dir.name, container_id, force=True)
