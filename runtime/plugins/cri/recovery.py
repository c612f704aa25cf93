"""Start-up recovery of ``cri.v1``: finish or undo what a daemon crash left half made.

It runs when the plugin starts, after the runtimes re-attached to their tasks
(a task that was never fully created is gone by then) and after
``network.cni`` released the networks nobody runs in, and before the CRI
socket serves. Records are written first (see :mod:`.records`), so every
half-made object has a record to find:

* a container record whose runtime knows no task died in CreateContainer
  (before the task existed) or in RemoveContainer (after the task went): the
  kubelet never got its id, or already asked to remove it. It is removed, with
  its snapshot and its image volumes' views, and its name is released. Image
  volumes still mounted on the host (a crash during a create) are unmounted
  first, whatever became of their container.
* a sandbox not stopped whose infra task is missing or was never started died
  in RunPodSandbox: the kubelet never got its id. So did a pod without infra
  (PID namespace not shared, :mod:`.pins`) whose record is not ``ready``; one
  whose directory or pinned namespaces are gone (a reboot) is removed too, as
  an infra pod whose task is missing. It is undone like a failed
  RunPodSandbox: infra task, CNI DEL (releases the address, veth, port rules),
  netns, ``/dev/shm`` mount, pinned namespaces and pod files, record, name.
* everything else is a pod or a container the kubelet knows or can list: it
  stays, in the state its task is in (a created container, a running or a
  not-ready pod), and Stop/Remove clean it as usual.

Pod directories without a record (a crash between removing the record and the
files) are removed last, unmounting their ``/dev/shm`` and pins first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
import msgspec

from runtime.api.containers import Container
from runtime.api.tasks import Status
from runtime.core.errors import MoorageError, NotFound
from runtime.plugins.cri import pins
from runtime.plugins.cri.sandbox_setup import pinned_kinds, unmount_pod_dir

if TYPE_CHECKING:
    from runtime.plugins.cri.pods import Pods
    from runtime.plugins.cri.records import SandboxRecord

__all__ = ["recover"]

log = logging.getLogger("moorage.cri")


async def recover(pods: Pods) -> None:
    """Remove the half-made containers and sandboxes a crash left (before serving)."""
    from runtime.plugins.cri.records import EXTENSION, KIND_LABEL, SandboxRecord

    # Image volumes are mounted on the host only while a task is created: any still
    # mounted are a crash's (the task, if it was made, holds its own copies).
    await anyio.to_thread.run_sync(pods.image_volumes.unmount_leftovers)
    records = await pods.containers.list(pods.namespace)
    loaded = {runtime.name for runtime in pods.runtimes.values()}
    for record in records:
        # A runtime that failed to load knows no task; its containers are not half made.
        if record.labels.get(KIND_LABEL) == "container" and record.runtime.name in loaded \
                and pods._runtime_of(record.id) is None:
            await _remove_container(pods, record)
    kept: set[str] = set()
    for record in records:
        if record.labels.get(KIND_LABEL) != "sandbox":
            continue
        sandbox = msgspec.convert(record.extensions.get(EXTENSION, {}), SandboxRecord)
        if sandbox.infra:
            task = await pods._task(record.id)
            half_made = not sandbox.stopped and record.runtime.name in loaded and (
                task is None or task.status == Status.CREATED)
        else:
            # Not ready: a crash in RunPodSandbox. Pins gone: a reboot, as a missing task.
            intact = sandbox.ready and await anyio.to_thread.run_sync(_intact, pods, sandbox)
            half_made = not sandbox.stopped and not intact
        if not half_made:
            kept.add(record.id)
            continue
        log.info("pod sandbox %s was not fully started before the restart; removing it",
                 record.id, extra={"namespace": pods.namespace})
        for container in await pods._containers_of(record.id):
            await _remove_container(pods, container)
        try:
            await pods._undo_sandbox(sandbox, ["task", "network", "files", "record"],
                                      pods._runtime_of(record.id))
        except MoorageError as exc:
            # Left listed (not ready): StopPodSandbox/RemovePodSandbox retry the rest.
            log.warning("pod sandbox %s: %s", record.id, exc.message,
                        extra={"namespace": pods.namespace})
            kept.add(record.id)
    await anyio.to_thread.run_sync(_remove_orphan_dirs, pods.state / "sandboxes", kept)


async def _remove_container(pods: Pods, record: Container) -> None:
    from runtime.plugins.cri.records import EXTENSION, ContainerRecord

    log.info("container %s has no task after the restart; removing it", record.id,
             extra={"namespace": pods.namespace})
    with contextlib.suppress(NotFound):
        await pods._kill_and_delete(record.id)
    with contextlib.suppress(NotFound):
        await pods.snapshots.get(pods.snapshotter).remove(pods.namespace, record.id)
    container = msgspec.convert(record.extensions.get(EXTENSION, {}), ContainerRecord)
    await pods.image_volumes.release(record.id, container.image_volumes)
    with contextlib.suppress(NotFound):
        await pods.containers.delete(pods.namespace, record.id)


def _intact(pods: Pods, sandbox: SandboxRecord) -> bool:
    """Whether a pod without infra still has its directory and pinned namespaces."""
    return os.path.isdir(sandbox.dir) and pins.pinned(
        sandbox.dir, pinned_kinds(pods._sandbox_config(sandbox)))


def _remove_orphan_dirs(base: Path, kept: set[str]) -> None:
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if entry.name in kept or not entry.is_dir():
            continue
        unmount_pod_dir(entry)
        log.info("removing the files of pod sandbox %s (no record)", entry.name)
        shutil.rmtree(entry, ignore_errors=True)
