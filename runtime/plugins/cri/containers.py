"""CRI containers: CreateContainer to RemoveContainer, their status and listing, ExecSync."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from runtime.api.containers import Container, RuntimeInfo
from runtime.api.tasks import ExecRequest, Status, TaskState
from runtime.core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
)
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_labels
from runtime.pkg.oci.spec import USER_ANNOTATION
from runtime.plugins.cri import spec as specs
from runtime.plugins.cri.image_volumes import view_key
from runtime.plugins.cri.messages import pb
from runtime.plugins.cri.records import (
    EXTENSION,
    KIND_LABEL,
    ContainerRecord,
    PodRecords,
    config_dict,
    labels_match,
    now_ns,
    ns_of,
)

__all__ = ["EXEC_SYNC_OUTPUT_LIMIT", "Containers"]

log = logging.getLogger("moorage.cri")

#: Most ExecSync output kept (stdout and stderr together): the response must fit in the
#: kubelet's 16 MiB gRPC message limit, and the daemon must not buffer a flood.
EXEC_SYNC_OUTPUT_LIMIT = (16 << 20) - (64 << 10)


class Containers(PodRecords):
    """The container half of the CRI RuntimeService (on the records of :class:`PodRecords`)."""

    async def create_container(self, request: pb.CreateContainerRequest) -> str:
        """CreateContainer: image rootfs snapshot, spec, record, task (created, not started)."""
        config = request.config
        if not config.metadata.name:
            raise InvalidArgument("container metadata needs a name")
        if not config.image.image:
            raise InvalidArgument("container config needs an image")
        validate_labels(dict(config.labels))
        sandbox_id = await self._resolve_id(request.pod_sandbox_id, "sandbox")
        _, sandbox = await self._record(sandbox_id, "sandbox")
        infra = await self._task(sandbox_id) if sandbox.infra else None
        if sandbox.stopped or (not sandbox.ready if not sandbox.infra else (
                infra is None or infra.status != Status.RUNNING)):
            raise FailedPrecondition(f"pod sandbox {sandbox_id!r} is not ready")
        sandbox_config = self._sandbox_config(sandbox)
        runtime = self.runtime_for(sandbox.runtime_handler)
        if any(m.recursive_read_only for m in config.mounts):
            rro = await self.supports_recursive_read_only(sandbox.runtime_handler)
        else:
            rro = False
        for mount in config.mounts:
            specs.validate_mount(mount, recursive_read_only=rro)
        image = await self.images.resolve(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found")
        volumes = self.image_volumes
        volume_images = await volumes.resolve(config.mounts)
        container_id = secrets.token_hex(32)
        name = f"{config.metadata.name}_{sandbox.name}_{config.metadata.attempt}"
        self._reserve(name, container_id)
        log_path = ""
        if config.log_path:
            log_dir = sandbox_config.log_directory or str(self.log_root / sandbox_id)
            log_path = os.path.join(log_dir, config.log_path)
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox_id, name=name, config=config_dict(config),
            image=config.image.image, image_id=image.id, image_name=image.name,
            log_path=log_path, created_at=now_ns(),
            image_volumes=[view_key(container_id, i) for i in volume_images])
        made: list[str] = []
        try:
            chain, image_config = await self.images.rootfs(image, self.snapshotter)
            target_pid = await self._pid_target(
                config.linux.security_context.namespace_options, sandbox_id)
            spec = specs.container_spec(
                self.namespace, container_id, config, sandbox_config, image_config,
                namespaces=self.pod_namespaces(sandbox, infra), target_pid=target_pid,
                files=self.files(sandbox),
                log_path=log_path, cgroups_path=self._cgroups_path(sandbox_config, container_id),
                min_oom_score_adj=_own_oom_score_adj(),
                image_volumes=volumes.sources(container_id, config.mounts))
            if log_path:
                await anyio.to_thread.run_sync(
                    lambda: Path(log_path).parent.mkdir(parents=True, exist_ok=True))
            await self.containers.create(self.namespace, Container(
                id=container_id, image=image.name, runtime=RuntimeInfo(name=runtime.name),
                spec=spec, snapshotter=self.snapshotter, snapshot_key=container_id,
                labels={KIND_LABEL: "container", **dict(config.labels),
                        **volumes.gc_labels(container_id, config.mounts)},
                extensions={EXTENSION: msgspec.to_builtins(record)}))
            made.append("record")
            # Crash tests: a record without a snapshot or a task.
            fault_point("cri.container.after-record")
            mounts = await self.snapshots.get(self.snapshotter).prepare(
                self.namespace, container_id, chain)
            made.append("snapshot")
            # Crash tests: the root filesystem's snapshot exists, no task yet.
            fault_point("cri.container.after-snapshot")
            if volume_images:
                made.append("image-volumes")
                await volumes.mount(container_id, config.mounts, volume_images)
                # Crash tests: image volumes mounted on the host, no task yet.
                fault_point("cri.container.after-image-volumes")
            made.append("task")
            await runtime.create(self.namespace, container_id, spec, mounts, stdin=config.stdin)
            if volume_images:
                # The task's mount namespace has its own copies now.
                await volumes.unmount(container_id)
            # Crash tests: created, but the kubelet never hears its id.
            fault_point("cri.container.after-task")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo_container(container_id, made, record.image_volumes)
                self._release(name, container_id)
            raise
        return container_id

    async def _pid_target(self, modes: pb.NamespaceOption, sandbox_id: str) -> int | None:
        """The pid whose PID namespace a ``TARGET`` container joins; None if not running.

        The target must be a container of the same pod, as containerd checks:
        a pod must not join the PID namespace of another pod's container.

        Raises:
            InvalidArgument: No target id, or not a container of this pod.
        """
        if modes.pid != pb.TARGET:
            return None
        if not modes.target_id:
            raise InvalidArgument("PID namespace mode TARGET needs a target_id")
        try:
            target_id = await self._resolve_id(modes.target_id, "container")
            _, target = await self._record(target_id, "container")
        except NotFound:
            raise InvalidArgument(f"PID namespace target {modes.target_id!r} is not a "
                                  "container") from None
        if target.sandbox_id != sandbox_id:
            raise InvalidArgument(f"PID namespace target {modes.target_id!r} is not a "
                                  f"container of pod sandbox {sandbox_id!r}")
        task = await self._task(target_id)
        return task.pid if task is not None and task.pid else None

    async def _undo_container(self, container_id: str, made: list[str],
                              image_volumes: list[str]) -> None:
        if "task" in made:
            with contextlib.suppress(MoorageError):
                await self._kill_and_delete(container_id)
        if "image-volumes" in made:
            with contextlib.suppress(MoorageError, OSError):
                await self.image_volumes.release(container_id, image_volumes)
        if "snapshot" in made:
            with contextlib.suppress(MoorageError):
                await self.snapshots.get(self.snapshotter).remove(self.namespace, container_id)
        if "record" in made:
            with contextlib.suppress(MoorageError):
                await self.containers.delete(self.namespace, container_id)

    async def start_container(self, container_id: str) -> None:
        """StartContainer: the task must be created, not started yet."""
        container_id = await self._resolve_id(container_id, "container")
        _, record = await self._record(container_id, "container")
        runtime = self._runtime_of(container_id)
        if runtime is None:
            raise FailedPrecondition(f"container {container_id!r} has no task (exited and "
                                     "removed?)")
        state = await runtime.state(self.namespace, container_id)
        if state.status != Status.CREATED:
            raise FailedPrecondition(f"container {container_id!r} is {state.status}, "
                                     "not created")
        await runtime.start(self.namespace, container_id)
        record.started_at = now_ns()
        await self._save_ext(container_id, record, durable=False)

    async def stop_container(self, container_id: str, timeout: int) -> None:
        """StopContainer: its stop signal, ``timeout`` seconds, then SIGKILL; idempotent."""
        try:
            container_id = await self._resolve_id(container_id, "container")
            container, _ = await self._record(container_id, "container")
        except NotFound:
            return
        name = container.spec.get("annotations", {}).get("io.moorage.stop-signal", "SIGTERM")
        sig = _signal_number(name)
        await self._stop_task(container_id, float(timeout), sig)

    async def remove_container(self, container_id: str) -> None:
        """RemoveContainer: force-stops a running one; unknown is OK."""
        try:
            container_id = await self._resolve_id(container_id, "container")
            _, record = await self._record(container_id, "container")
        except NotFound:
            return
        with contextlib.suppress(NotFound):
            await self._kill_and_delete(container_id)
        with contextlib.suppress(NotFound):
            await self.snapshots.get(self.snapshotter).remove(self.namespace, container_id)
        if record.image_volumes:
            await self.image_volumes.release(container_id, record.image_volumes)
        with contextlib.suppress(NotFound):
            await self.containers.delete(self.namespace, container_id)
        self._release(record.name, container_id)
        self._stats.pop(container_id, None)
        self._oom.discard(container_id)

    def note_oom(self, container_id: str) -> None:
        """The OOM killer struck in the container's cgroup (from a ``/tasks/oom`` event)."""
        self._oom.add(container_id)

    async def container_status(self, container_id: str) -> pb.ContainerStatus:
        """ContainerStatus, with the reason of an exit."""
        container_id = await self._resolve_id(container_id, "container")
        container, record = await self._record(container_id, "container")
        config = pb.ContainerConfig()
        from google.protobuf import json_format
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        task = await self._task(container_id)
        state, exit_code, finished, reason = pb.CONTAINER_UNKNOWN, 0, 0, ""
        if task is None:
            state = pb.CONTAINER_EXITED
            exit_code = 255
            reason = "Unknown"
        elif task.status == Status.CREATED:
            state = pb.CONTAINER_CREATED
        elif task.status in (Status.RUNNING, Status.PAUSED):
            state = pb.CONTAINER_RUNNING
        elif task.status == Status.STOPPED:
            state = pb.CONTAINER_EXITED
            exit_code = task.exit_status if task.exit_status is not None else 255
            finished = ns_of(task.exited_at)
            oom = record.oom or container_id in self._oom
            if oom and not record.oom:
                record.oom = True
                await self._save_ext(container_id, record)
            reason = "OOMKilled" if oom else ("Completed" if exit_code == 0 else "Error")
        status = pb.ContainerStatus(
            id=container_id, metadata=config.metadata, state=state,  # type: ignore[arg-type]
            created_at=record.created_at, started_at=record.started_at,
            finished_at=finished, exit_code=exit_code, image=_image_spec(record, config),
            image_ref=record.image_id, image_id=record.image_id, reason=reason,
            labels=config.labels, annotations=config.annotations, mounts=config.mounts,
            log_path=record.log_path)
        status.resources.linux.CopyFrom(config.linux.resources)
        user = await anyio.to_thread.run_sync(_effective_user, container.spec, task)
        status.user.linux.uid = int(user.get("uid", 0))
        status.user.linux.gid = int(user.get("gid", 0))
        # The process's groups: its primary one, then the others (as containerd and
        # the kernel's getgroups() report them; the kubelet compares the set).
        gids = [int(user.get("gid", 0)), *(int(g) for g in user.get("additionalGids", []))]
        status.user.linux.supplemental_groups.extend(dict.fromkeys(gids))
        return status

    async def _container_item(self, container: Container) -> tuple[pb.Container, str]:
        record = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
        config = pb.ContainerConfig()
        from google.protobuf import json_format
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        task = await self._task(container.id)
        state = _state_of(task)
        return pb.Container(
            id=container.id, pod_sandbox_id=record.sandbox_id, metadata=config.metadata,
            image=pb.ImageSpec(image=record.image), image_ref=record.image_id,
            state=state, created_at=record.created_at,  # type: ignore[arg-type]
            labels=config.labels, annotations=config.annotations,
            image_id=record.image_id), record.sandbox_id

    async def list_containers(self, filter_: pb.ContainerFilter | None) -> list[pb.Container]:
        """ListContainers with its filters."""
        found = []
        for container in await self._list_records("container"):
            if filter_ is not None and filter_.id and not container.id.startswith(filter_.id):
                continue
            item, sandbox_id = await self._container_item(container)
            if filter_ is not None:
                if filter_.pod_sandbox_id and not sandbox_id.startswith(filter_.pod_sandbox_id):
                    continue
                if filter_.HasField("state") and filter_.state.state != item.state:
                    continue
                if not labels_match(item.labels, filter_.label_selector):
                    continue
            found.append(item)
        return found

    async def update_resources(self, container_id: str, res: pb.LinuxContainerResources) -> None:
        """UpdateContainerResources on the running task's cgroup."""
        container_id = await self._resolve_id(container_id, "container")
        _, record = await self._record(container_id, "container")
        runtime = self._runtime_of(container_id)
        if runtime is None:
            raise FailedPrecondition(f"container {container_id!r} has no task")
        await runtime.update(self.namespace, container_id, specs.linux_resources(res))
        # ContainerStatus.resources reports the update (the kubelet's in-place resize reads it).
        config = pb.ContainerConfig()
        from google.protobuf import json_format
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        config.linux.resources.MergeFrom(res)
        record.config = config_dict(config)
        await self._save_ext(container_id, record)

    async def reopen_log(self, container_id: str) -> None:
        """ReopenContainerLog: conmon reopens the file; returns once the new file exists."""
        container_id = await self._resolve_id(container_id, "container")
        _, record = await self._record(container_id, "container")
        task = await self._task(container_id)
        if task is None or task.status != Status.RUNNING:
            raise FailedPrecondition(f"container {container_id!r} is not running")
        if not record.log_path:
            return
        ctl = Path(task.bundle) / "ctl"

        def reopen() -> None:
            # conmon's control fifo: message type 2 is "reopen the log file".
            fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, b"2 0 0\n")
            finally:
                os.close(fd)

        try:
            await anyio.to_thread.run_sync(reopen)
        except OSError as exc:
            raise FailedPrecondition(f"cannot reach the monitor of {container_id!r}: "
                                     f"{exc.strerror}") from None
        with anyio.move_on_after(5):
            while not await anyio.to_thread.run_sync(os.path.exists, record.log_path):
                await anyio.sleep(0.02)
            return
        raise DeadlineExceeded(f"the log of {container_id!r} was not reopened in time")

    async def running_container(self, container_id: str) -> str:
        """The full id of a running container (for Exec and Attach).

        Raises:
            NotFound: No such container.
            FailedPrecondition: It is not running.
        """
        container_id = await self._resolve_id(container_id, "container")
        await self._record(container_id, "container")
        task = await self._task(container_id)
        if task is None or task.status != Status.RUNNING:
            raise FailedPrecondition(f"container {container_id!r} is not running")
        return container_id

    async def exec_sync(self, container_id: str, cmd: list[str],
                        timeout: int) -> pb.ExecSyncResponse:
        """ExecSync: output and exit code; a timeout kills the exec's process tree."""
        if not cmd:
            raise InvalidArgument("exec needs a command")
        container_id = await self._resolve_id(container_id, "container")
        await self._record(container_id, "container")
        runtime = self._runtime_of(container_id)
        task = await self._task(container_id)
        if runtime is None or task is None or task.status != Status.RUNNING:
            raise FailedPrecondition(f"container {container_id!r} is not running")
        result = await runtime.exec_sync(
            self.namespace, container_id,
            ExecRequest(exec_id="sync-" + secrets.token_hex(8), args=list(cmd)),
            timeout=timeout if timeout > 0 else None, output_limit=EXEC_SYNC_OUTPUT_LIMIT)
        if result.timed_out:
            raise DeadlineExceeded(f"command {cmd[0]!r} timed out after {timeout} s")
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                   exit_code=result.exit_status)


def _image_spec(record: ContainerRecord, config: pb.ContainerConfig) -> pb.ImageSpec:
    """The status' image: a name, also for a container created by image id.

    The kubelet creates containers by image id and shows this name in the pod's status;
    containerd answers a repo tag too.
    """
    by_id = record.image.startswith("sha256:") or record.image == record.image_id.removeprefix(
        "sha256:")
    return pb.ImageSpec(image=record.image_name if by_id and record.image_name else record.image,
                        user_specified_image=config.image.user_specified_image)


def _state_of(task: TaskState | None) -> int:
    if task is None:
        return pb.CONTAINER_EXITED
    return {Status.CREATED: pb.CONTAINER_CREATED, Status.RUNNING: pb.CONTAINER_RUNNING,
            Status.PAUSED: pb.CONTAINER_RUNNING,
            Status.STOPPED: pb.CONTAINER_EXITED}.get(task.status, pb.CONTAINER_UNKNOWN)


def _signal_number(name: str) -> int:
    text = name.upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        return int(signal.SIGTERM)


def _own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text().strip())
    except (OSError, ValueError):
        return 0


def _effective_user(spec: dict[str, Any], task: TaskState | None) -> dict[str, Any]:
    """The OCI ``process.user`` the container runs as.

    Names and the image's group memberships are resolved by the runtime at task
    create, into the bundle's ``config.json``; the stored spec has them unresolved.
    Without a user to resolve, or without a bundle (the task is gone), the stored
    spec's user is all there is.
    """
    if USER_ANNOTATION in spec.get("annotations", {}) and task is not None and task.bundle:
        with contextlib.suppress(OSError, ValueError):
            final = json.loads((Path(task.bundle) / "config.json").read_bytes())
            user = final.get("process", {}).get("user")
            if isinstance(user, dict):
                return user
    stored: dict[str, Any] = spec.get("process", {}).get("user", {})
    return stored
