"""What the CRI keeps of its pod sandboxes and containers, and the lookups on it.

Every sandbox and every CRI container is a Moorage container record in the
CRI namespace, labelled :data:`KIND_LABEL`, with what the CRI needs back
(its config, the pod's netns and files, the log path...) in the record's
extension :data:`EXTENSION`. Records are written before anything else is
made, so a crash leaves something to find and clean (see :mod:`.recovery`);
a failed create undoes what it made and releases the name it reserved (the
kubelet retries).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from runtime.api.containers import Container
from runtime.api.tasks import Status, TaskState
from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
)
from runtime.pkg.mount import recursive_attributes_supported
from runtime.pkg.oci.spec import cgroups_path
from runtime.pkg.userns import idmap_supported
from runtime.plugins.containers.api import ContainerStore
from runtime.plugins.cri import pins
from runtime.plugins.cri import spec as specs
from runtime.plugins.cri.image_volumes import ImageVolumes
from runtime.plugins.cri.images import CriImages
from runtime.plugins.cri.messages import pb
from runtime.plugins.network.api import Network
from runtime.plugins.runtime.api import Runtime
from runtime.plugins.snapshots.api import Snapshots

__all__ = [
    "EXTENSION", "KIND_LABEL", "ContainerRecord", "PodRecords", "SandboxRecord", "StatsSample",
    "config_dict", "labels_match", "now_ns", "ns_of",
]

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
    #: The pod runs an infra process (its PID namespace is shared); else its IPC and UTS
    #: namespaces are pinned under ``dir`` (see :mod:`.pins`).
    infra: bool = True
    #: A pod without infra: RunPodSandbox finished (a record without it is a crash's).
    ready: bool = False


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
    #: Snapshot keys of the views behind its image volumes (see :mod:`.image_volumes`).
    image_volumes: list[str] = msgspec.field(default_factory=list)


def now_ns() -> int:
    """Now, in nanoseconds since the epoch (the CRI's timestamps)."""
    return time.time_ns()


def ns_of(when: datetime | None) -> int:
    """A datetime in nanoseconds since the epoch; 0 for none."""
    return int(when.timestamp() * 1e9) if when else 0


def config_dict(message: Any) -> dict[str, Any]:
    """A CRI config message as a dict, with the proto field names (as records keep it)."""
    from google.protobuf import json_format
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def labels_match(labels: Any, selector: Any) -> bool:
    """Whether ``labels`` hold every key and value of ``selector``."""
    return all(labels.get(k) == v for k, v in selector.items())


class StatsSample(msgspec.Struct):
    """A CPU usage reading, to compute the next reading's rate from."""

    timestamp: int
    usage_ns: int


class PodRecords(msgspec.Struct, dict=True):
    """The CRI's records of its sandboxes and containers, and what finds them.

    ``dict=True``: a ``__dict__`` for :attr:`image_volumes` (a cached property).

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
        cni_conf_dir: Where the pod network's configuration is (the first usable one);
            None: ``network.cni``'s default network.
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
    cni_conf_dir: Path | None = None
    _names: dict[str, str] = msgspec.field(default_factory=dict)
    _stats: dict[str, StatsSample] = msgspec.field(default_factory=dict)
    _oom: set[str] = msgspec.field(default_factory=set)
    _locks: dict[str, anyio.Lock] = msgspec.field(default_factory=dict)
    # Sandbox id -> netns path ("" for host networking), for the streaming server.
    _netns: dict[str, str] = msgspec.field(default_factory=dict)
    # Sandbox id -> its config, parsed once: a sandbox's config never changes, and
    # json_format's parse is pure Python (CreateContainer, statuses, listings read it).
    _sandbox_configs: dict[str, pb.PodSandboxConfig] = msgspec.field(default_factory=dict)
    # Why idmapped mounts cannot be made here ("" when they can), probed once.
    _idmap_unsupported: str | None = None

    # -- set-up ---------------------------------------------------------------------

    @property
    def infra_rootfs(self) -> Path:
        """The infra process's root filesystem."""
        return self.root / "infra" / "rootfs"

    def _cgroups_path(self, config: pb.PodSandboxConfig, id_: str) -> str:
        """The cgroup of a pod's infra process or container ``id_``.

        With the pod's ``cgroup_parent`` (the kubelet's ``/kubepods/.../pod<uid>``)
        it is ``<cgroup_parent>/<id>``, as containerd's cgroupfs driver makes it;
        without, ``<daemon cgroup_parent>/<namespace>/<id>`` like every task's.
        """
        parent = config.linux.cgroup_parent
        if not parent:
            return cgroups_path(self.namespace, id_, self.cgroup_parent)
        if not parent.startswith("/") or ".." in parent.split("/"):
            raise InvalidArgument(f"cgroup parent {parent!r} must be an absolute cgroupfs path "
                                  "(this runtime uses the cgroupfs driver)")
        return f"{parent.rstrip('/')}/{id_}"

    def files(self, record: SandboxRecord) -> specs.SandboxFiles:
        """The pod's shared files."""
        base = Path(record.dir)
        shm = base / "shm" if record.shm_mounted else Path("/dev/shm")
        return specs.SandboxFiles(hostname=base / "hostname", hosts=base / "hosts",
                                  resolv_conf=base / "resolv.conf", shm=shm)

    def pod_namespaces(self, record: SandboxRecord, infra: TaskState | None) -> specs.PodNamespaces:
        """The pod's namespaces its containers join (``infra``: its running infra task)."""
        config = self._sandbox_config(record)
        if record.infra:
            assert infra is not None and infra.pid
            return specs.PodNamespaces.of_infra(infra.pid, config)
        return self.pinned_namespaces(record, config)

    def pinned_namespaces(self, record: SandboxRecord,
                          config: pb.PodSandboxConfig) -> specs.PodNamespaces:
        """The pod's namespaces pinned under its directory (no PID namespace: none is)."""
        modes = config.linux.security_context.namespace_options
        host_net = modes.network == pb.NODE
        userns = specs.pod_user_namespace(config) is not None
        return specs.PodNamespaces(
            network=record.netns, uts="" if host_net else str(pins.pin_path(record.dir, pins.UTS)),
            ipc="" if modes.ipc == pb.NODE else str(pins.pin_path(record.dir, pins.IPC)),
            pid="" if modes.pid == pb.NODE else None,
            user=str(pins.pin_path(record.dir, pins.USER)) if userns else "")

    @functools.cached_property
    def image_volumes(self) -> ImageVolumes:
        """The containers' image volumes (views mounted under ``<state>/image-volumes``)."""
        return ImageVolumes(namespace=self.namespace, snapshots=self.snapshots,
                            snapshotter=self.snapshotter, images=self.images,
                            base=self.state / "image-volumes")

    async def supports_recursive_read_only(self, handler: str) -> bool:
        """Whether the handler's runtime can make recursive read-only mounts.

        As containerd decides it: the runtime lists ``rro`` among its mount
        options and the kernel has ``mount_setattr(2)``.
        """
        runtime = self.runtime_for(handler)
        return "rro" in await runtime.mount_options() and recursive_attributes_supported()

    async def supports_user_namespaces(self, handler: str) -> bool:
        """Whether pods of the handler may have a user namespace (``userns_options`` ``POD``).

        The runtime must be runc (1.1 joins a user namespace by path; the
        ``runtime.runc`` plugin idmaps the root filesystem for it), the kernel
        must idmap a mount of the plugin's root directory (tried once, as
        critest tries it; the snapshots are on the daemon's root too) and
        overlayfs layers (Linux 5.19), and the daemon's state directory must
        be searchable by others.
        """
        runtime = self.runtime_for(handler)
        if runtime.name != "runtime.runc":
            return False
        if self._idmap_unsupported is None:
            self._idmap_unsupported = await anyio.to_thread.run_sync(
                _probe_idmap, self.root, self.state.parent)
            if self._idmap_unsupported:
                logging.getLogger("moorage.cri").info(
                    "user namespaces not supported: %s", self._idmap_unsupported)
        return not self._idmap_unsupported

    # -- names and records ----------------------------------------------------------

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

    async def verbose_info(self, id_: str, kind: str) -> str:
        """The ``info`` entry of a verbose status (JSON), shaped as containerd's.

        The process (``crictl inspect`` reads ``info.pid``), the record's config, the OCI spec.
        """
        id_ = await self._resolve_id(id_, kind)
        container, record = await self._record(id_, kind)
        task = await self._task(id_)
        info: dict[str, Any] = {
            "pid": task.pid if task is not None and task.pid else 0,
            "processStatus": str(task.status) if task is not None else "deleted",
            "snapshotter": container.snapshotter, "snapshotKey": container.snapshot_key,
            "runtimeType": container.runtime.name, "config": record.config,
            "runtimeSpec": container.spec}
        if isinstance(record, ContainerRecord):
            info["sandboxID"] = record.sandbox_id
        else:
            info["runtimeHandler"] = record.runtime_handler
            if record.netns:
                info["netNamespaceClosed"] = not await anyio.to_thread.run_sync(
                    os.path.exists, record.netns)
        return json.dumps(info)

    async def _list_records(self, kind: str) -> list[Container]:
        return [r for r in await self.containers.list(self.namespace)
                if r.labels.get(KIND_LABEL) == kind]

    async def _containers_of(self, sandbox_id: str) -> list[Container]:
        return [r for r in await self._list_records("container")
                if r.extensions.get(EXTENSION, {}).get("sandbox_id") == sandbox_id]

    async def _save_ext(self, id_: str, ext: msgspec.Struct, *, durable: bool = True) -> None:
        """Store the record's CRI extension.

        ``durable=False`` for what describes processes and mounts a reboot ends
        anyway (a pod's netns, address and ``/dev/shm``, a start time): after a
        reboot recovery removes such pods and containers whatever their record
        says, and a daemon crash loses nothing either way.
        """
        await self.containers.update(self.namespace, id_,
                                     extensions={EXTENSION: msgspec.to_builtins(ext)},
                                     durable=durable)

    def _sandbox_config(self, record: SandboxRecord) -> pb.PodSandboxConfig:
        """The sandbox's config, parsed from its record once (callers must not change it)."""
        config = self._sandbox_configs.get(record.id)
        if config is None:
            from google.protobuf import json_format

            config = pb.PodSandboxConfig()
            json_format.ParseDict(record.config, config, ignore_unknown_fields=True)
            self._sandbox_configs[record.id] = config
        return config

    # -- tasks ----------------------------------------------------------------------

    async def _task(self, id_: str) -> TaskState | None:
        for runtime in self.runtimes.values():
            if runtime.has(self.namespace, id_):
                return await runtime.state(self.namespace, id_)
        return None

    def _runtime_of(self, id_: str) -> Runtime | None:
        return next((r for r in self.runtimes.values() if r.has(self.namespace, id_)), None)

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


def _probe_idmap(root: Path, daemon_state: Path) -> str:
    """Why pods cannot have user namespaces here; ``""`` when they can.

    Idmapped mounts must work under ``root``, and the daemon's state directory
    must be searchable by others: runc 1.1 reaches a task's rootfs and the pod's
    files under it from inside the user namespace.
    """
    if not daemon_state.stat().st_mode & 0o001:
        return f"{daemon_state} is not searchable by other users (make it 0711)"
    release = os.uname().release.split("-")[0].split(".")
    try:
        version = (int(release[0]), int(release[1]))
    except (IndexError, ValueError):
        version = (0, 0)
    if version < (5, 19):
        return f"Linux {os.uname().release} cannot idmap overlayfs mounts (5.19)"
    root.mkdir(parents=True, exist_ok=True)
    return idmap_supported([root])
