"""The task service: route each task call to the runtime that runs (or will run) the task.

A new task goes to the runtime its container names (``runc`` by default); an
existing one is found in whichever runtime holds it, so a task stays reachable
even if its container record was changed or removed meanwhile.
"""

from __future__ import annotations

import contextlib
import copy
import signal
from collections.abc import Callable, Mapping, Sequence

import anyio

from runtime.api.containers import Container
from runtime.api.tasks import CreateTaskRequest, ExitStatus, Status, TaskState
from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
)
from runtime.plugins.containers.api import ContainerStore
from runtime.plugins.runtime.api import Runtime, runtime_plugin_id
from runtime.plugins.snapshots.api import Mount, Snapshots

__all__ = ["TaskService", "parse_signal"]


def parse_signal(value: int | str) -> int:
    """A signal number from ``9``, ``"9"``, ``"KILL"`` or ``"SIGKILL"``."""
    if isinstance(value, int) or value.isdigit():
        number = int(value)
        if not 0 < number < signal.NSIG:
            raise InvalidArgument(f"signal {number} is out of range")
        return number
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


class TaskService:
    """Dispatch over the running ``runtime.*`` plugins.

    Args:
        containers: The container store.
        runtimes: Running runtimes by plugin id (``runc``, ``crun``).
        snapshots: Returns the snapshot service when it runs (for containers
            whose root filesystem is a snapshot), else ``None``.
    """

    def __init__(self, containers: ContainerStore, runtimes: Mapping[str, Runtime],
                 snapshots: Callable[[], Snapshots | None] | None = None) -> None:
        self.containers = containers
        self.runtimes = dict(runtimes)
        self._snapshots = snapshots or (lambda: None)

    def runtime_for(self, container: Container) -> Runtime:
        """The runtime a container names; NotFound if it is not running."""
        plugin_id = runtime_plugin_id(container.runtime.name or "runc")
        try:
            return self.runtimes[plugin_id]
        except KeyError:
            running = ", ".join(sorted(f"runtime.{r}" for r in self.runtimes)) or "none"
            raise NotFound(f"runtime {container.runtime.name!r} of container {container.id!r} "
                           f"is not running (running: {running})") from None

    def find(self, namespace: str, container_id: str) -> Runtime:
        """The runtime holding the task; NotFound if none does."""
        for runtime in self.runtimes.values():
            if runtime.has(namespace, container_id):
                return runtime
        raise NotFound(f"task {container_id!r} not found")

    async def create(self, namespace: str, request: CreateTaskRequest) -> TaskState:
        """Create the task of a container on the runtime it names."""
        container = await self.containers.get(namespace, request.container_id)
        for runtime in self.runtimes.values():
            if runtime.has(namespace, container.id):
                raise AlreadyExists(f"task {container.id!r} already exists")
        runtime = self.runtime_for(container)
        spec = copy.deepcopy(container.spec)
        if request.terminal is not None:
            spec.setdefault("process", {})["terminal"] = request.terminal
        rootfs = list(request.rootfs) or await self._snapshot_mounts(namespace, container)
        return await runtime.create(namespace, container.id, spec, rootfs, stdin=request.stdin)

    async def run(self, namespace: str, container: Container, *, parent: str = "",
                  rootfs: Sequence[Mount] = (), stdin: bool = False,
                  start: bool = False) -> TaskState:
        """Create ``container``, prepare its snapshot on ``parent``, create (and start) its task.

        The record goes first: once written it keeps the garbage collector off
        the snapshot, so no lease is needed. On failure, everything made is undone.

        Raises:
            AlreadyExists: The container or its task exists.
            NotFound: The runtime or snapshotter is not running, or ``parent`` is unknown.
        """
        for runtime in self.runtimes.values():
            if runtime.has(namespace, container.id):
                raise AlreadyExists(f"task {container.id!r} already exists")
        runtime = self.runtime_for(container)
        await self.containers.create(namespace, container)
        made: list[str] = ["container"]
        try:
            mounts = list(rootfs)
            if parent and container.snapshotter and container.snapshot_key:
                found = await self._snapshot_service().get(container.snapshotter).prepare(
                    namespace, container.snapshot_key, parent)
                made.append("snapshot")
                mounts = [Mount(type=m.type, source=m.source, target=m.target,
                                options=list(m.options)) for m in found]
            elif not mounts:
                mounts = await self._snapshot_mounts(namespace, container)
            state = await runtime.create(namespace, container.id, copy.deepcopy(container.spec),
                                         mounts, stdin=stdin)
            made.append("task")
            if start:
                await runtime.start(namespace, container.id)
                state = await runtime.state(namespace, container.id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo(namespace, container, runtime, made)
            raise
        return state

    async def _undo(self, namespace: str, container: Container, runtime: Runtime,
                    made: list[str]) -> None:
        with contextlib.suppress(MoorageError):
            if "task" in made:
                await self._delete_task(namespace, container.id, runtime, force=True)
            await self.containers.delete(namespace, container.id)
            if "snapshot" in made:
                await self._snapshot_service().get(container.snapshotter).remove(
                    namespace, container.snapshot_key)

    async def remove(self, namespace: str, container_id: str, *, force: bool = False,
                     snapshot: bool = False) -> None:
        """Delete a container and, with ``snapshot``, its snapshot; ``force`` deletes its task too.

        Without ``force`` a container that still has a task (in any state) is
        refused, as ``DELETE /v1/containers/{id}`` refuses it; with ``force``
        a running task is killed and its exit awaited first.

        Raises:
            FailedPrecondition: The container has a task and ``force`` is not set.
            NotFound: Neither the container nor a task exists.
        """
        runtime = next((r for r in self.runtimes.values() if r.has(namespace, container_id)),
                       None)
        if runtime is not None:
            if not force:
                raise FailedPrecondition(
                    f"container {container_id!r} still has a task; delete the task first")
            await self._delete_task(namespace, container_id, runtime, force=True)
        try:
            container = await self.containers.get(namespace, container_id)
        except NotFound:
            if runtime is None:
                raise
            return
        await self.containers.delete(namespace, container_id)
        if snapshot and container.snapshotter and container.snapshot_key:
            service = self._snapshots()
            if service is not None:
                with contextlib.suppress(NotFound):
                    await service.get(container.snapshotter).remove(namespace,
                                                                    container.snapshot_key)

    async def delete_task(self, namespace: str, container_id: str, *,
                          force: bool = False) -> ExitStatus:
        """Delete a task (``force``: kill a running one and wait for its exit first).

        Raises:
            NotFound: No runtime holds the task.
            FailedPrecondition: The task runs and ``force`` is not set.
        """
        return await self._delete_task(namespace, container_id,
                                       self.find(namespace, container_id), force=force)

    @staticmethod
    async def _delete_task(namespace: str, container_id: str, runtime: Runtime, *,
                           force: bool) -> ExitStatus:
        state = await runtime.state(namespace, container_id)
        if state.status in (Status.RUNNING, Status.PAUSED):
            if not force:
                raise FailedPrecondition(f"task {container_id!r} is {state.status}; "
                                         "kill it first or force the removal")
            with contextlib.suppress(NotFound):
                await runtime.kill(namespace, container_id, signal.SIGKILL, all=True)
            if state.status == Status.PAUSED:
                # A frozen process receives its SIGKILL only once thawed.
                with contextlib.suppress(MoorageError):
                    await runtime.resume(namespace, container_id)
            await runtime.wait(namespace, container_id)
        return await runtime.delete(namespace, container_id)

    def _snapshot_service(self) -> Snapshots:
        service = self._snapshots()
        if service is None:
            raise NotFound("the snapshot service is not running")
        return service

    async def root_mounts(self, namespace: str, container: Container) -> list[Mount]:
        """The mounts of the container's snapshot (none when it has no snapshot)."""
        return await self._snapshot_mounts(namespace, container)

    async def _snapshot_mounts(self, namespace: str, container: Container) -> list[Mount]:
        if not (container.snapshotter and container.snapshot_key):
            return []
        service = self._snapshots()
        if service is None:
            raise NotFound(f"container {container.id!r} has a {container.snapshotter} snapshot "
                           "but the snapshot service is not running")
        mounts = await service.get(container.snapshotter).mounts(namespace,
                                                                container.snapshot_key)
        return [Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
                for m in mounts]

    async def stop(self, namespace: str, container_id: str, *, signal_number: int = 0,
                   timeout: float = 10.0) -> ExitStatus:
        """Signal the task, then SIGKILL every process once ``timeout`` seconds passed.

        The first signal is ``signal_number``, else the container's stop signal
        (its image's ``StopSignal``, kept in the spec by spec generation), else
        SIGTERM. A task not running is left as it is; its exit is returned.

        Raises:
            NotFound: No runtime holds the task.
            InvalidArgument: The container's stop signal is not a signal.
        """
        runtime = self.find(namespace, container_id)
        state = await runtime.state(namespace, container_id)
        if state.status not in (Status.RUNNING, Status.PAUSED):
            return await runtime.wait(namespace, container_id)
        first = signal_number or await self._stop_signal(namespace, container_id)
        with contextlib.suppress(NotFound):
            await runtime.kill(namespace, container_id, first)
        if state.status == Status.PAUSED:
            # A frozen process acts on no signal until thawed.
            with contextlib.suppress(MoorageError):
                await runtime.resume(namespace, container_id)
        with anyio.move_on_after(timeout):
            return await runtime.wait(namespace, container_id)
        with contextlib.suppress(NotFound):
            await runtime.kill(namespace, container_id, signal.SIGKILL, all=True)
        return await runtime.wait(namespace, container_id)

    async def _stop_signal(self, namespace: str, container_id: str) -> int:
        from runtime.pkg.oci.spec import STOP_SIGNAL_ANNOTATION

        try:
            container = await self.containers.get(namespace, container_id)
        except NotFound:
            return int(signal.SIGTERM)
        name = str((container.spec.get("annotations") or {}).get(STOP_SIGNAL_ANNOTATION, ""))
        return parse_signal(name) if name else int(signal.SIGTERM)

    async def list(self, namespace: str) -> list[TaskState]:
        """Every task of the namespace over all runtimes, sorted by id."""
        found: list[TaskState] = []
        for runtime in self.runtimes.values():
            found.extend(await runtime.list_tasks(namespace))
        return sorted(found, key=lambda t: t.container_id)

    async def has_task(self, namespace: str, container_id: str) -> bool:
        """Whether any runtime holds a task for the container."""
        return any(r.has(namespace, container_id) for r in self.runtimes.values())
