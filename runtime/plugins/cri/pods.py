"""Pod sandboxes and their containers, on the container, snapshot, network and runtime services.

Every sandbox and every CRI container is a Moorage container record in the
CRI namespace, labelled :data:`KIND_LABEL`, with what the CRI needs back
(its config, the pod's netns and files, the log path...) in the record's
extension :data:`EXTENSION`. Records are written before anything else is
made, so a crash leaves something to find and clean; a failed create undoes
what it made and releases the name it reserved (the kubelet retries).

A sandbox's infra process (``catatonit -P``, PID 1 of the pod) runs from a
tiny read-only root filesystem the plugin writes under its root directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from google.protobuf import json_format

from runtime.api.containers import Container, RuntimeInfo
from runtime.api.tasks import ExecRequest, Status, TaskState
from runtime.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
)
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_labels
from runtime.plugins.containers.api import ContainerStore
from runtime.plugins.cri import spec as specs
from runtime.plugins.cri.images import CriImages
from runtime.plugins.cri.recovery import recover
from runtime.plugins.cri.v1 import api_pb2 as pb
from runtime.plugins.network.api import BRIDGE, Network, PortMapping, etc_hosts, resolv_conf
from runtime.plugins.runtime.api import Runtime
from runtime.plugins.snapshots.api import Snapshots

__all__ = ["EXTENSION", "KIND_LABEL", "Pods"]

log = logging.getLogger("moorage.cri")

#: Label of every record the CRI made: ``sandbox`` or ``container``.
KIND_LABEL = "io.moorage.cri.kind"
#: The record extension holding the CRI's own fields.
EXTENSION = "io.moorage.cri"


class SandboxRecord(msgspec.Struct, kw_only=True):
    """What the CRI keeps about a pod sandbox (the record's extension)."""

    id: str
    name: str
    config: dict[str, Any]
    created_at: int
    runtime_handler: str = ""
    netns: str = ""
    ip: str = ""
    additional_ips: list[str] = msgspec.field(default_factory=list)
    dir: str = ""
    shm_mounted: bool = False
    stopped: bool = False


class ContainerRecord(msgspec.Struct, kw_only=True):
    """What the CRI keeps about a container (the record's extension)."""

    id: str
    sandbox_id: str
    name: str
    config: dict[str, Any]
    image: str
    image_id: str
    image_name: str
    log_path: str = ""
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    oom: bool = False


def _now_ns() -> int:
    return time.time_ns()


def _ns(when: datetime | None) -> int:
    return int(when.timestamp() * 1e9) if when else 0


def _config_dict(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def _labels_match(labels: Any, selector: Any) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass
class _StatsSample:
    timestamp: int
    usage_ns: int


@dataclass
class Pods:
    """The sandbox and container half of the CRI RuntimeService.

    Args:
        namespace: The Moorage namespace of everything the CRI makes.
        containers: The container store.
        snapshots: The snapshot service.
        snapshotter: Where containers' root filesystems are prepared.
        runtimes: Running runtimes by plugin id.
        network: The CNI network service.
        images: The CRI image service (to resolve a container's image).
        root: The plugin's persistent directory.
        state: The plugin's volatile directory.
        log_root: Logs of pods without a log directory.
        cgroup_parent: The daemon's cgroup parent.
        infra_binary: The infra process's binary on the host.
    """

    namespace: str
    containers: ContainerStore
    snapshots: Snapshots
    snapshotter: str
    runtimes: dict[str, Runtime]
    network: Network
    images: CriImages
    root: Path
    state: Path
    log_root: Path
    cgroup_parent: str
    infra_binary: str
    _names: dict[str, str] = field(default_factory=dict)
    _stats: dict[str, _StatsSample] = field(default_factory=dict)
    _oom: set[str] = field(default_factory=set)
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)
    # Sandbox id -> netns path ("" for host networking), for the streaming server.
    _netns: dict[str, str] = field(default_factory=dict)

    # -- set-up ---------------------------------------------------------------------

    async def load(self) -> None:
        """Undo what a crash left half made, rebuild the reserved names and the infra rootfs."""
        await anyio.to_thread.run_sync(self._write_infra_rootfs)
        await recover(self)
        for record in await self.containers.list(self.namespace):
            kind = record.labels.get(KIND_LABEL)
            ext = record.extensions.get(EXTENSION)
            if kind and isinstance(ext, dict) and "name" in ext:
                self._names[str(ext["name"])] = record.id
                if kind == "sandbox":
                    self._netns[record.id] = str(ext.get("netns", ""))

    @property
    def infra_rootfs(self) -> Path:
        """The infra process's root filesystem."""
        return self.root / "infra" / "rootfs"

    def _write_infra_rootfs(self) -> None:
        rootfs = self.infra_rootfs
        for sub in ("proc", "dev", "sys", "etc"):
            (rootfs / sub).mkdir(parents=True, exist_ok=True)
        binary = shutil.which(self.infra_binary) or self.infra_binary
        if not Path(binary).is_file():
            raise FailedPrecondition(
                f"infra process {self.infra_binary!r} not found (apt-get install catatonit)")
        target = rootfs / specs.INFRA_BINARY.lstrip("/")
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(binary, tmp)
        tmp.chmod(0o755)
        tmp.rename(target)

    def _lock(self, key: str) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    def runtime_for(self, handler: str) -> Runtime:
        """The runtime of a runtime handler: ``""`` is runc, else a ``runtime.*`` id."""
        plugin = handler or "runc"
        try:
            return self.runtimes[plugin]
        except KeyError:
            raise NotFound(f"no runtime for handler {handler!r} (have: "
                           f"{', '.join(sorted(self.runtimes)) or 'none'})") from None

    def _reserve(self, name: str, id_: str) -> None:
        owner = self._names.get(name)
        if owner is not None:
            raise AlreadyExists(f"name {name!r} is reserved for {owner!r}")
        self._names[name] = id_

    def _release(self, name: str, id_: str) -> None:
        if self._names.get(name) == id_:
            del self._names[name]

    # -- records --------------------------------------------------------------------

    async def _record(self, id_: str, kind: str) -> tuple[Container, Any]:
        try:
            record = await self.containers.get(self.namespace, id_)
        except (NotFound, InvalidArgument):
            raise NotFound(f"{'pod sandbox' if kind == 'sandbox' else 'container'} "
                           f"{id_!r} not found") from None
        if record.labels.get(KIND_LABEL) != kind:
            raise NotFound(f"{'pod sandbox' if kind == 'sandbox' else 'container'} "
                           f"{id_!r} not found")
        ext = record.extensions.get(EXTENSION, {})
        type_: type[Any] = SandboxRecord if kind == "sandbox" else ContainerRecord
        return record, msgspec.convert(ext, type_)

    async def _resolve_id(self, id_: str, kind: str) -> str:
        """A full id from an id or a unique prefix of one (as crictl allows)."""
        if len(id_) == 64:
            return id_
        if not id_:
            raise InvalidArgument(f"{kind} id must not be empty")
        found = [r.id for r in await self._list_records(kind) if r.id.startswith(id_)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFound(f"{'pod sandbox' if kind == 'sandbox' else 'container'} "
                           f"{id_!r} not found")
        raise InvalidArgument(f"{kind} id prefix {id_!r} is ambiguous")

    async def _list_records(self, kind: str) -> list[Container]:
        return [r for r in await self.containers.list(self.namespace)
                if r.labels.get(KIND_LABEL) == kind]

    async def _save_ext(self, id_: str, ext: msgspec.Struct) -> None:
        await self.containers.update(self.namespace, id_,
                                     extensions={EXTENSION: msgspec.to_builtins(ext)})

    async def _task(self, id_: str) -> TaskState | None:
        for runtime in self.runtimes.values():
            if runtime.has(self.namespace, id_):
                return await runtime.state(self.namespace, id_)
        return None

    def _runtime_of(self, id_: str) -> Runtime | None:
        return next((r for r in self.runtimes.values() if r.has(self.namespace, id_)), None)

    # -- sandboxes ------------------------------------------------------------------

    async def run_sandbox(self, request: pb.RunPodSandboxRequest) -> str:
        """RunPodSandbox: netns + CNI, pod files, the infra process."""
        config = request.config
        meta = config.metadata
        if not (meta.name and meta.namespace and meta.uid):
            raise InvalidArgument("pod sandbox metadata needs name, namespace and uid")
        validate_labels(dict(config.labels))
        runtime = self.runtime_for(request.runtime_handler)
        sandbox_id = secrets.token_hex(32)
        name = f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        self._reserve(name, sandbox_id)
        made: list[str] = []
        record = SandboxRecord(id=sandbox_id, name=name, config=_config_dict(config),
                               created_at=_now_ns(), runtime_handler=request.runtime_handler)
        modes = config.linux.security_context.namespace_options
        host_net = modes.network == pb.NODE
        try:
            record.dir = str(self.state / "sandboxes" / sandbox_id)
            await self.containers.create(self.namespace, Container(
                id=sandbox_id, image="", runtime=RuntimeInfo(name=runtime.name),
                labels={KIND_LABEL: "sandbox", **dict(config.labels)},
                extensions={EXTENSION: msgspec.to_builtins(record)}))
            made.append("record")
            # Crash tests: the record only; nothing made yet.
            fault_point("cri.sandbox.after-record")
            ports = self._ports(config)
            if not host_net:
                made.append("network")
                attachment = await self.network.attach(
                    self.namespace, sandbox_id, BRIDGE, ports, cni_args={
                        "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": meta.namespace,
                        "K8S_POD_NAME": meta.name, "K8S_POD_INFRA_CONTAINER_ID": sandbox_id,
                        "K8S_POD_UID": meta.uid})
                record.netns = attachment.netns
                ips = [ip.ip for ip in attachment.ips]
                record.ip = ips[0] if ips else ""
                record.additional_ips = ips[1:]
                # Crash tests: an address is allocated, the record does not say which.
                fault_point("cri.sandbox.after-cni-add")
            made.append("files")
            record.shm_mounted = await anyio.to_thread.run_sync(
                self._write_files, record, config, attachment if not host_net else None)
            # Crash tests: /dev/shm is mounted, the record does not say so.
            fault_point("cri.sandbox.after-files")
            await self._save_ext(sandbox_id, record)
            spec = specs.sandbox_spec(
                self.namespace, sandbox_id, config, rootfs=self.infra_rootfs,
                netns=record.netns or None,
                cgroup_parent=self._cgroup_parent(config))
            made.append("task")
            await runtime.create(self.namespace, sandbox_id, spec, [])
            # Crash tests: the infra task is created, not started.
            fault_point("cri.sandbox.after-infra-create")
            await runtime.start(self.namespace, sandbox_id)
            # Crash tests: the pod runs, but the kubelet never hears its id.
            fault_point("cri.sandbox.after-infra-start")
            self._netns[sandbox_id] = record.netns
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo_sandbox(record, made, runtime)
                self._release(name, sandbox_id)
            raise
        log.info("pod sandbox %s (%s/%s) running, ip %s", sandbox_id, meta.namespace, meta.name,
                 record.ip or "host", extra={"namespace": self.namespace})
        return sandbox_id

    def _cgroup_parent(self, config: pb.PodSandboxConfig) -> str:
        parent = config.linux.cgroup_parent
        if not parent:
            return self.cgroup_parent
        if not parent.startswith("/"):
            raise InvalidArgument(f"cgroup parent {parent!r} must be an absolute cgroupfs path "
                                  "(this runtime uses the cgroupfs driver)")
        return parent

    @staticmethod
    def _ports(config: pb.PodSandboxConfig) -> list[PortMapping]:
        ports = []
        for pm in config.port_mappings:
            if not pm.host_port:
                continue  # declared, not published
            if pm.protocol == pb.SCTP:
                raise InvalidArgument("SCTP port mappings are not supported")
            try:
                ports.append(PortMapping(host_port=pm.host_port, container_port=pm.container_port,
                                         protocol="udp" if pm.protocol == pb.UDP else "tcp",
                                         host_ip=pm.host_ip))
            except (msgspec.ValidationError, ValueError) as exc:
                raise InvalidArgument(f"port mapping {pm.host_port}:{pm.container_port}: "
                                      f"{exc}") from None
        return ports

    def files(self, record: SandboxRecord) -> specs.SandboxFiles:
        """The pod's shared files."""
        base = Path(record.dir)
        shm = base / "shm" if record.shm_mounted else Path("/dev/shm")
        return specs.SandboxFiles(hostname=base / "hostname", hosts=base / "hosts",
                                  resolv_conf=base / "resolv.conf", shm=shm)

    def _write_files(self, record: SandboxRecord, config: pb.PodSandboxConfig,
                     attachment: Any) -> bool:
        base = Path(record.dir)
        base.mkdir(parents=True, exist_ok=True, mode=0o711)
        host_net = attachment is None
        hostname = (os.uname().nodename if host_net
                    else (config.hostname or config.metadata.name)[:63])
        (base / "hostname").write_text(hostname + "\n")
        (base / "hosts").write_text(etc_hosts(hostname, attachment, host=host_net))
        dns = config.dns_config
        if dns.servers or dns.searches or dns.options:
            lines = [f"nameserver {s}" for s in dns.servers]
            if dns.searches:
                lines.append("search " + " ".join(dns.searches))
            if dns.options:
                lines.append("options " + " ".join(dns.options))
            text = "\n".join(lines) + "\n"
        else:
            text = resolv_conf(host=host_net)
        (base / "resolv.conf").write_text(text)
        for name in ("hostname", "hosts", "resolv.conf"):
            (base / name).chmod(0o644)
        if config.linux.security_context.namespace_options.ipc == pb.NODE:
            return False
        shm = base / "shm"
        shm.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k",
                        "shm", str(shm)], check=True, capture_output=True)
        return True

    @staticmethod
    def _remove_files(record: SandboxRecord) -> None:
        if not record.dir:
            return
        base = Path(record.dir)
        shm = base / "shm"
        # Mounted even when the record does not say so (a crash before it was saved).
        if os.path.ismount(shm):
            subprocess.run(["umount", "-l", str(shm)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)

    async def _undo_sandbox(self, record: SandboxRecord, made: list[str],
                            runtime: Runtime | None) -> None:
        if "task" in made and runtime is not None:
            with contextlib.suppress(MoorageError):
                await self._kill_and_delete(record.id)
        if "network" in made:
            # DEL even when ADD half-failed: the network service keeps the record until then.
            with contextlib.suppress(MoorageError):
                await self.network.detach(self.namespace, record.id)
        if "files" in made:
            await anyio.to_thread.run_sync(self._remove_files, record)
        if "record" in made:
            with contextlib.suppress(MoorageError):
                await self.containers.delete(self.namespace, record.id)

    async def _kill_and_delete(self, id_: str) -> None:
        runtime = self._runtime_of(id_)
        if runtime is None:
            return
        state = await runtime.state(self.namespace, id_)
        if state.status in (Status.RUNNING, Status.PAUSED, Status.CREATED):
            with contextlib.suppress(NotFound, FailedPrecondition):
                await runtime.kill(self.namespace, id_, signal.SIGKILL, all=True)
            if state.status == Status.PAUSED:
                with contextlib.suppress(MoorageError):
                    await runtime.resume(self.namespace, id_)
            if state.status != Status.CREATED:
                with anyio.move_on_after(10):
                    await runtime.wait(self.namespace, id_)
        await runtime.delete(self.namespace, id_)

    async def stop_sandbox(self, sandbox_id: str) -> None:
        """StopPodSandbox: kill every container, stop the infra process, CNI DEL; idempotent."""
        try:
            sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
            _, record = await self._record(sandbox_id, "sandbox")
        except NotFound:
            return
        async with self._lock(sandbox_id):
            for container in await self._containers_of(sandbox_id):
                await self.stop_container(container.id, 0)
            await self._stop_task(sandbox_id, 0, signal.SIGKILL)
            # DEL always, even if the netns is gone or ADD half-failed.
            await self.network.detach(self.namespace, sandbox_id)
            if not record.stopped:
                record.stopped = True
                await self._save_ext(sandbox_id, record)

    async def _containers_of(self, sandbox_id: str) -> list[Container]:
        return [r for r in await self._list_records("container")
                if r.extensions.get(EXTENSION, {}).get("sandbox_id") == sandbox_id]

    async def remove_sandbox(self, sandbox_id: str) -> None:
        """RemovePodSandbox: force-remove its containers, then everything of the pod."""
        try:
            sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
            _, record = await self._record(sandbox_id, "sandbox")
        except NotFound:
            return
        await self.stop_sandbox(sandbox_id)
        async with self._lock(sandbox_id):
            for container in await self._containers_of(sandbox_id):
                await self.remove_container(container.id)
            with contextlib.suppress(NotFound):
                await self._kill_and_delete(sandbox_id)
            await anyio.to_thread.run_sync(self._remove_files, record)
            with contextlib.suppress(NotFound):
                await self.containers.delete(self.namespace, sandbox_id)
            self._release(record.name, sandbox_id)
            self._netns.pop(sandbox_id, None)
            self._stats.pop(sandbox_id, None)

    async def _sandbox_state(self, record: SandboxRecord) -> int:
        task = await self._task(record.id)
        ready = (not record.stopped and task is not None and task.status == Status.RUNNING)
        return pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY

    def _sandbox_config(self, record: SandboxRecord) -> pb.PodSandboxConfig:
        config = pb.PodSandboxConfig()
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        return config

    async def sandbox_status(self, sandbox_id: str) -> pb.PodSandboxStatus:
        """PodSandboxStatus."""
        sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
        _, record = await self._record(sandbox_id, "sandbox")
        config = self._sandbox_config(record)
        state = await self._sandbox_state(record)
        status = pb.PodSandboxStatus(
            id=record.id, metadata=config.metadata, state=state,  # type: ignore[arg-type]
            created_at=record.created_at, labels=config.labels,
            annotations=config.annotations, runtime_handler=record.runtime_handler)
        if record.ip:
            status.network.ip = record.ip
            status.network.additional_ips.extend(pb.PodIP(ip=ip) for ip in record.additional_ips)
        status.linux.namespaces.options.CopyFrom(
            config.linux.security_context.namespace_options)
        return status

    async def list_sandboxes(self, filter_: pb.PodSandboxFilter | None) -> list[pb.PodSandbox]:
        """ListPodSandbox with its filters."""
        found = []
        for container in await self._list_records("sandbox"):
            record = msgspec.convert(container.extensions.get(EXTENSION, {}), SandboxRecord)
            if filter_ is not None and filter_.id and not record.id.startswith(filter_.id):
                continue
            config = self._sandbox_config(record)
            if filter_ is not None and not _labels_match(config.labels, filter_.label_selector):
                continue
            state = await self._sandbox_state(record)
            if filter_ is not None and filter_.HasField("state") and filter_.state.state != state:
                continue
            found.append(pb.PodSandbox(
                id=record.id, metadata=config.metadata, state=state,  # type: ignore[arg-type]
                created_at=record.created_at, labels=config.labels,
                annotations=config.annotations, runtime_handler=record.runtime_handler))
        return found

    def netns_path(self, sandbox_id: str) -> str | None:
        """The pod's network namespace path, for port-forward; ``None`` for host networking.

        Raises:
            NotFound: No such pod sandbox (or it was removed).
        """
        try:
            return self._netns[sandbox_id] or None
        except KeyError:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found") from None

    # -- containers -----------------------------------------------------------------

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
        infra = await self._task(sandbox_id)
        if sandbox.stopped or infra is None or infra.status != Status.RUNNING:
            raise FailedPrecondition(f"pod sandbox {sandbox_id!r} is not ready")
        sandbox_config = self._sandbox_config(sandbox)
        image = await self.images.resolve(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found")
        container_id = secrets.token_hex(32)
        name = f"{config.metadata.name}_{sandbox.name}_{config.metadata.attempt}"
        self._reserve(name, container_id)
        runtime = self.runtime_for(sandbox.runtime_handler)
        log_path = ""
        if config.log_path:
            log_dir = sandbox_config.log_directory or str(self.log_root / sandbox_id)
            log_path = os.path.join(log_dir, config.log_path)
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox_id, name=name, config=_config_dict(config),
            image=config.image.image, image_id=image.id, image_name=image.name,
            log_path=log_path, created_at=_now_ns())
        made: list[str] = []
        try:
            chain, image_config = await self.images.rootfs(image.name, self.snapshotter)
            target_pid = None
            modes = config.linux.security_context.namespace_options
            if modes.pid == pb.TARGET:
                target = await self._task(modes.target_id)
                target_pid = target.pid if target and target.pid else None
            spec = specs.container_spec(
                self.namespace, container_id, config, sandbox_config, image_config,
                infra_pid=infra.pid, target_pid=target_pid, files=self.files(sandbox),
                log_path=log_path, cgroup_parent=self._cgroup_parent(sandbox_config),
                min_oom_score_adj=_own_oom_score_adj())
            if log_path:
                await anyio.to_thread.run_sync(
                    lambda: Path(log_path).parent.mkdir(parents=True, exist_ok=True))
            await self.containers.create(self.namespace, Container(
                id=container_id, image=image.name, runtime=RuntimeInfo(name=runtime.name),
                spec=spec, snapshotter=self.snapshotter, snapshot_key=container_id,
                labels={KIND_LABEL: "container", **dict(config.labels)},
                extensions={EXTENSION: msgspec.to_builtins(record)}))
            made.append("record")
            # Crash tests: a record without a snapshot or a task.
            fault_point("cri.container.after-record")
            mounts = await self.snapshots.get(self.snapshotter).prepare(
                self.namespace, container_id, chain)
            made.append("snapshot")
            # Crash tests: the root filesystem's snapshot exists, no task yet.
            fault_point("cri.container.after-snapshot")
            made.append("task")
            await runtime.create(self.namespace, container_id, spec, mounts, stdin=config.stdin)
            # Crash tests: created, but the kubelet never hears its id.
            fault_point("cri.container.after-task")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo_container(container_id, made)
                self._release(name, container_id)
            raise
        return container_id

    async def _undo_container(self, container_id: str, made: list[str]) -> None:
        if "task" in made:
            with contextlib.suppress(MoorageError):
                await self._kill_and_delete(container_id)
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
        record.started_at = _now_ns()
        await self._save_ext(container_id, record)

    async def _stop_task(self, id_: str, timeout: float, sig: int) -> None:
        runtime = self._runtime_of(id_)
        if runtime is None:
            return
        state = await runtime.state(self.namespace, id_)
        if state.status not in (Status.RUNNING, Status.PAUSED):
            return
        if timeout > 0:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await runtime.kill(self.namespace, id_, sig)
            with anyio.move_on_after(timeout):
                await runtime.wait(self.namespace, id_)
                return
        with contextlib.suppress(NotFound, FailedPrecondition):
            await runtime.kill(self.namespace, id_, signal.SIGKILL, all=True)
        if state.status == Status.PAUSED:
            with contextlib.suppress(MoorageError):
                await runtime.resume(self.namespace, id_)
        with anyio.move_on_after(30):
            await runtime.wait(self.namespace, id_)

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
            finished = _ns(task.exited_at)
            oom = record.oom or container_id in self._oom
            if oom and not record.oom:
                record.oom = True
                await self._save_ext(container_id, record)
            reason = "OOMKilled" if oom else ("Completed" if exit_code == 0 else "Error")
        status = pb.ContainerStatus(
            id=container_id, metadata=config.metadata, state=state,  # type: ignore[arg-type]
            created_at=record.created_at, started_at=record.started_at,
            finished_at=finished, exit_code=exit_code, image=pb.ImageSpec(image=record.image),
            image_ref=record.image_id, image_id=record.image_id, reason=reason,
            labels=config.labels, annotations=config.annotations, mounts=config.mounts,
            log_path=record.log_path)
        status.resources.linux.CopyFrom(config.linux.resources)
        user = container.spec.get("process", {}).get("user", {})
        status.user.linux.uid = int(user.get("uid", 0))
        status.user.linux.gid = int(user.get("gid", 0))
        status.user.linux.supplemental_groups.extend(int(g) for g in
                                                     user.get("additionalGids", []))
        return status

    async def _container_item(self, container: Container) -> tuple[pb.Container, str]:
        record = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
        config = pb.ContainerConfig()
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
                if not _labels_match(item.labels, filter_.label_selector):
                    continue
            found.append(item)
        return found

    async def update_resources(self, container_id: str, res: pb.LinuxContainerResources) -> None:
        """UpdateContainerResources on the running task's cgroup."""
        container_id = await self._resolve_id(container_id, "container")
        await self._record(container_id, "container")
        runtime = self._runtime_of(container_id)
        if runtime is None:
            raise FailedPrecondition(f"container {container_id!r} has no task")
        await runtime.update(self.namespace, container_id, specs.linux_resources(res))

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

    async def known_sandbox(self, sandbox_id: str) -> str:
        """The full id of an existing sandbox (for PortForward); NotFound otherwise."""
        sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
        await self._record(sandbox_id, "sandbox")
        return sandbox_id

    # -- exec -----------------------------------------------------------------------

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
        exec_id = "sync-" + secrets.token_hex(8)
        await runtime.exec(self.namespace, container_id,
                           ExecRequest(exec_id=exec_id, args=list(cmd)))
        out: dict[int, bytearray] = {2: bytearray(), 3: bytearray()}
        timed_out = False
        try:
            stream = await runtime.attach(self.namespace, container_id, exec_id, start=True)
            try:
                with anyio.move_on_after(timeout if timeout > 0 else None) as scope:
                    while (chunk := await stream.receive()) is not None:
                        out.setdefault(chunk[0], bytearray()).extend(chunk[1])
                    exit_ = await runtime.wait(self.namespace, container_id, exec_id)
                timed_out = scope.cancelled_caught
            finally:
                stream.close()
            if timed_out:
                with anyio.CancelScope(shield=True):
                    await self._kill_exec_tree(runtime, container_id, exec_id)
                raise DeadlineExceeded(f"command {cmd[0]!r} timed out after {timeout} s")
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(MoorageError):
                await runtime.delete(self.namespace, container_id, exec_id)
        return pb.ExecSyncResponse(stdout=bytes(out[2]), stderr=bytes(out[3]),
                                   exit_code=exit_.exit_status)

    async def _kill_exec_tree(self, runtime: Runtime, container_id: str, exec_id: str) -> None:
        state = await runtime.state(self.namespace, container_id)
        pid = next((e.pid for e in state.execs if e.id == exec_id), 0)
        if pid:
            await anyio.to_thread.run_sync(_kill_tree, pid)
        with contextlib.suppress(MoorageError):
            await runtime.kill(self.namespace, container_id, signal.SIGKILL, exec_id=exec_id)
        with anyio.move_on_after(10), contextlib.suppress(MoorageError):
            await runtime.wait(self.namespace, container_id, exec_id)

    # -- stats ----------------------------------------------------------------------

    async def container_stats(self, container_id: str) -> pb.ContainerStats:
        """ContainerStats of one container."""
        container_id = await self._resolve_id(container_id, "container")
        container, record = await self._record(container_id, "container")
        return await self._stats_of(container, record)

    async def _stats_of(self, container: Container, record: ContainerRecord) -> pb.ContainerStats:
        config = pb.ContainerConfig()
        json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
        stats = pb.ContainerStats()
        stats.attributes.id = container.id
        stats.attributes.metadata.CopyFrom(config.metadata)
        stats.attributes.labels.update(config.labels)
        stats.attributes.annotations.update(config.annotations)
        await self._fill_usage(container.id, stats.cpu, stats.memory)
        stats.writable_layer.timestamp = _now_ns()
        stats.writable_layer.fs_id.mountpoint = container.snapshotter
        with contextlib.suppress(MoorageError):
            usage = await self.snapshots.get(self.snapshotter).usage(self.namespace, container.id)
            stats.writable_layer.used_bytes.value = usage.size
            stats.writable_layer.inodes_used.value = usage.inodes
        return stats

    async def _fill_usage(self, id_: str, cpu: pb.CpuUsage, memory: pb.MemoryUsage) -> None:
        runtime = self._runtime_of(id_)
        now = _now_ns()
        cpu.timestamp = memory.timestamp = now
        if runtime is None:
            return
        try:
            metrics = await runtime.metrics(self.namespace, id_)
        except MoorageError:
            return
        usage_ns = metrics.cpu_usage_usec * 1000
        cpu.usage_core_nano_seconds.value = usage_ns
        earlier = self._stats.get(id_)
        if earlier is not None and now > earlier.timestamp and usage_ns >= earlier.usage_ns:
            cpu.usage_nano_cores.value = int((usage_ns - earlier.usage_ns) * 1e9
                                             / (now - earlier.timestamp))
        self._stats[id_] = _StatsSample(now, usage_ns)
        memory.usage_bytes.value = metrics.memory_usage_bytes
        memory.working_set_bytes.value = metrics.memory_usage_bytes
        if metrics.memory_limit_bytes:
            memory.available_bytes.value = max(
                metrics.memory_limit_bytes - metrics.memory_usage_bytes, 0)

    async def list_container_stats(self, filter_: pb.ContainerStatsFilter | None
                                   ) -> list[pb.ContainerStats]:
        """ListContainerStats with its filters."""
        found = []
        for container in await self._list_records("container"):
            record = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
            if filter_ is not None:
                if filter_.id and not container.id.startswith(filter_.id):
                    continue
                if (filter_.pod_sandbox_id
                        and not record.sandbox_id.startswith(filter_.pod_sandbox_id)):
                    continue
                if not _labels_match(container.labels, filter_.label_selector):
                    continue
            found.append(await self._stats_of(container, record))
        return found

    async def sandbox_stats(self, sandbox_id: str) -> pb.PodSandboxStats:
        """PodSandboxStats: the pod's infra cgroup plus its containers."""
        sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
        _, record = await self._record(sandbox_id, "sandbox")
        return await self._sandbox_stats_of(record)

    async def _sandbox_stats_of(self, record: SandboxRecord) -> pb.PodSandboxStats:
        config = self._sandbox_config(record)
        stats = pb.PodSandboxStats()
        stats.attributes.id = record.id
        stats.attributes.metadata.CopyFrom(config.metadata)
        stats.attributes.labels.update(config.labels)
        stats.attributes.annotations.update(config.annotations)
        linux = stats.linux
        await self._fill_usage(record.id, linux.cpu, linux.memory)
        procs = 0
        for container in await self._containers_of(record.id):
            crecord = msgspec.convert(container.extensions.get(EXTENSION, {}), ContainerRecord)
            cstats = await self._stats_of(container, crecord)
            linux.containers.append(cstats)
            linux.cpu.usage_core_nano_seconds.value += cstats.cpu.usage_core_nano_seconds.value
            linux.cpu.usage_nano_cores.value += cstats.cpu.usage_nano_cores.value
            linux.memory.working_set_bytes.value += cstats.memory.working_set_bytes.value
            linux.memory.usage_bytes.value += cstats.memory.usage_bytes.value
            runtime = self._runtime_of(container.id)
            if runtime is not None:
                with contextlib.suppress(MoorageError):
                    procs += len(await runtime.pids(self.namespace, container.id))
        linux.process.timestamp = _now_ns()
        linux.process.process_count.value = procs
        linux.network.timestamp = _now_ns()
        return stats

    async def list_sandbox_stats(self, filter_: pb.PodSandboxStatsFilter | None
                                 ) -> list[pb.PodSandboxStats]:
        """ListPodSandboxStats with its filters."""
        found = []
        for container in await self._list_records("sandbox"):
            record = msgspec.convert(container.extensions.get(EXTENSION, {}), SandboxRecord)
            if filter_ is not None:
                if filter_.id and not record.id.startswith(filter_.id):
                    continue
                if not _labels_match(self._sandbox_config(record).labels,
                                     filter_.label_selector):
                    continue
            found.append(await self._sandbox_stats_of(record))
        return found

    # -- events ---------------------------------------------------------------------

    async def container_events(self, exchange: Any) -> AsyncIterator[pb.ContainerEventResponse]:
        """GetContainerEvents: created, started, stopped, deleted, from the task events."""
        kinds = {"/tasks/create": pb.CONTAINER_CREATED_EVENT,
                 "/tasks/start": pb.CONTAINER_STARTED_EVENT,
                 "/tasks/exit": pb.CONTAINER_STOPPED_EVENT,
                 "/tasks/delete": pb.CONTAINER_DELETED_EVENT}
        filters = [f'topic=="{topic}"' for topic in kinds]
        async with exchange.subscribe(*filters, namespace=self.namespace) as subscription:
            async for envelope in subscription:
                event = envelope.event
                container_id = getattr(event, "container_id", "")
                if envelope.topic == "/tasks/exit" and getattr(event, "id", "") not in (
                        "", container_id):
                    continue  # an exec's exit
                response = pb.ContainerEventResponse(
                    container_id=container_id,
                    container_event_type=kinds[envelope.topic],  # type: ignore[arg-type]
                    created_at=_ns(envelope.timestamp))
                with contextlib.suppress(MoorageError):
                    container, record = await self._record(container_id, "container")
                    del container
                    if envelope.topic != "/tasks/delete":
                        response.containers_statuses.append(
                            await self.container_status(container_id))
                    with contextlib.suppress(MoorageError):
                        response.pod_sandbox_status.CopyFrom(
                            await self.sandbox_status(record.sandbox_id))
                yield response


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


def _children(pid: int) -> Iterable[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                yield from (int(c) for c in (task / "children").read_text().split())
    except OSError:
        return


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (children first found, then killed)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(c for c in _children(current) if c not in seen)
    for victim in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)

