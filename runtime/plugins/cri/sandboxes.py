"""Pod sandboxes: RunPodSandbox to RemovePodSandbox, their status and listing."""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from runtime.api.containers import Container, RuntimeInfo
from runtime.api.tasks import Status
from runtime.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
)
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_labels
from runtime.pkg.namespaces import unpin as unpin_namespace
from runtime.plugins.cri import pins
from runtime.plugins.cri import sandbox_setup as setup
from runtime.plugins.cri import spec as specs
from runtime.plugins.cri.containers import Containers
from runtime.plugins.cri.messages import pb
from runtime.plugins.cri.records import (
    EXTENSION,
    KIND_LABEL,
    SandboxRecord,
    config_dict,
    labels_match,
    now_ns,
)
from runtime.plugins.network.api import BRIDGE, Attachment, PortMapping
from runtime.plugins.runtime.api import Runtime

__all__ = ["Sandboxes"]

log = logging.getLogger("moorage.cri")


class Sandboxes(Containers):
    """The sandbox half of the CRI RuntimeService (stopping a pod stops its containers)."""

    async def run_sandbox(self, request: pb.RunPodSandboxRequest) -> str:
        """RunPodSandbox: netns + CNI, pod files, the infra process or the pinned namespaces."""
        config = request.config
        meta = config.metadata
        if not (meta.name and meta.namespace and meta.uid):
            raise InvalidArgument("pod sandbox metadata needs name, namespace and uid")
        validate_labels(dict(config.labels))
        specs.pod_sysctls(config)  # refused before anything is made
        runtime = self.runtime_for(request.runtime_handler)
        if specs.pod_user_namespace(config) is not None and \
                not await self.supports_user_namespaces(request.runtime_handler):
            raise InvalidArgument(f"runtime handler {request.runtime_handler!r} does not "
                                  "support user namespaces here (see Status' features)")
        modes = config.linux.security_context.namespace_options
        host_net = modes.network == pb.NODE
        network = BRIDGE
        if not host_net:
            found = await anyio.to_thread.run_sync(self.pod_network)
            if found is None:
                raise FailedPrecondition(
                    f"no usable CNI network configuration in {self.network_conf_dir}: "
                    "the pod network is not ready (NetworkPluginNotReady)")
            network = found
        sandbox_id = secrets.token_hex(32)
        name = f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        self._reserve(name, sandbox_id)
        made: list[str] = []
        record = SandboxRecord(id=sandbox_id, name=name, config=config_dict(config),
                               created_at=now_ns(), runtime_handler=request.runtime_handler,
                               infra=specs.needs_infra(config))
        try:
            record.dir = str(self.state / "sandboxes" / sandbox_id)
            await self.containers.create(self.namespace, Container(
                id=sandbox_id, image="", runtime=RuntimeInfo(name=runtime.name),
                labels={KIND_LABEL: "sandbox", **dict(config.labels)},
                extensions={EXTENSION: msgspec.to_builtins(record)}))
            made.append("record")
            # Crash tests: the record only; nothing made yet.
            fault_point("cri.sandbox.after-record")
            ports = setup.port_mappings(config)
            await self._make_sandbox(record, config, runtime, made, None if host_net else (
                network, ports))
            if record.infra:
                _, net_sysctls = specs.pod_sysctls(config)
                if net_sysctls and specs.pod_user_namespace(config) is not None:
                    # Not in the infra's spec: runc joins the user namespace first.
                    await anyio.to_thread.run_sync(pins.apply_sysctls, record.netns, net_sysctls)
                await runtime.start(self.namespace, sandbox_id)
                # Crash tests: the pod runs, but the kubelet never hears its id.
                fault_point("cri.sandbox.after-infra-start")
            else:
                _, net_sysctls = specs.pod_sysctls(config)
                if net_sysctls:
                    await anyio.to_thread.run_sync(pins.apply_sysctls, record.netns, net_sysctls)
                # The one record update of a pod without infra: its netns, address,
                # /dev/shm, and that it is complete (recovery removes it otherwise).
                record.ready = True
                await self._save_ext(record.id, record, durable=False)
                # Crash tests: the pod is ready, but the kubelet never hears its id.
                fault_point("cri.sandbox.after-ready")
            self._netns[sandbox_id] = record.netns
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._undo_sandbox(record, made, runtime)
                self._release(name, sandbox_id)
            raise
        log.info("pod sandbox %s (%s/%s) running, ip %s", sandbox_id, meta.namespace, meta.name,
                 record.ip or "host", extra={"namespace": self.namespace})
        return sandbox_id

    async def _make_sandbox(self, record: SandboxRecord, config: pb.PodSandboxConfig,
                            runtime: Runtime, made: list[str],
                            network: tuple[str, list[PortMapping]] | None) -> None:
        """The pod's network and files beside its infra task (created, not started) or pins.

        A pod without infra (``record.infra`` false) gets its IPC and UTS
        namespaces pinned instead (:mod:`.pins`, no process), with its hostname
        and IPC sysctls; its record is saved by the caller once all is made.

        ``network`` is the network and ports to attach to, ``None`` for host
        networking. Neither half needs the other once the network namespace
        exists: the infra process only joins it, and the pod files (``hosts``
        needs the pod's address) are for the containers. So the CNI ADD runs
        while runc creates the infra process, as containerd's sandbox does.
        ``made`` says what to undo; the first failure is raised as it is (the
        other half is cancelled), not as a group.
        """
        failures: list[Exception] = []
        netns_ready = anyio.Event()
        userns = specs.pod_user_namespace(config)
        netns_source: str | None = None
        pinned_namespaces: specs.PodNamespaces | None = None
        if userns is not None:
            # First, alone: the network namespace is made with the user namespace.
            own_sysctls, _ = specs.pod_sysctls(config)
            kinds = tuple(k for k in setup.pinned_kinds(config) if k != pins.USER)
            made.append("pins")
            await anyio.to_thread.run_sync(lambda: pins.pin_with_user_namespace(
                Path(record.dir), kinds, uids=userns.uids, gids=userns.gids,
                hostname=specs.pod_hostname(config), sysctls=own_sysctls))
            # Crash tests: the pod's namespaces are pinned, nothing else is made.
            fault_point("cri.sandbox.after-userns")
            netns_source = str(pins.pin_path(record.dir, pins.NET))
            pinned_namespaces = self.pinned_namespaces(record, config)

        async def network_and_files(scope: anyio.CancelScope) -> None:
            try:
                attachment = None
                if network is not None:
                    made.append("network")
                    attachment = await self._attach(record, config.metadata, network,
                                                    netns_ready.set, netns_source)
                    if netns_source is not None:
                        # network.cni holds it now, and releases it at CNI DEL.
                        await anyio.to_thread.run_sync(unpin_namespace, netns_source)
                made.append("files")
                record.shm_mounted = await anyio.to_thread.run_sync(
                    setup.write_files, record, config, attachment)
                # Crash tests: /dev/shm is mounted, the record does not say so.
                fault_point("cri.sandbox.after-files")
                if record.infra:
                    await self._save_ext(record.id, record, durable=False)
            except Exception as exc:
                failures.append(exc)
                scope.cancel()

        async def infra(scope: anyio.CancelScope) -> None:
            try:
                if network is not None:
                    await netns_ready.wait()
                spec = specs.sandbox_spec(
                    self.namespace, record.id, config, rootfs=self.infra_rootfs,
                    netns=record.netns or None,
                    cgroups_path=self._cgroups_path(config, record.id),
                    pinned=pinned_namespaces)
                made.append("task")
                await runtime.create(self.namespace, record.id, spec, [])
                # Crash tests: the infra task is created, not started.
                fault_point("cri.sandbox.after-infra-create")
            except Exception as exc:
                failures.append(exc)
                scope.cancel()

        async def pinned(scope: anyio.CancelScope) -> None:
            try:
                own_sysctls, _ = specs.pod_sysctls(config)
                made.append("pins")
                await anyio.to_thread.run_sync(lambda: pins.pin(
                    Path(record.dir), setup.pinned_kinds(config),
                    hostname=specs.pod_hostname(config), sysctls=own_sysctls))
                # Crash tests: the namespaces are pinned, the record does not say so.
                fault_point("cri.sandbox.after-pins")
            except Exception as exc:
                failures.append(exc)
                scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(network_and_files, tg.cancel_scope)
            if record.infra:
                tg.start_soon(infra, tg.cancel_scope)
            elif userns is None:
                tg.start_soon(pinned, tg.cancel_scope)
        if failures:
            raise failures[0]

    async def _attach(self, record: SandboxRecord, meta: pb.PodSandboxMetadata,
                      network: tuple[str, list[PortMapping]],
                      netns_ready: Callable[[], object],
                      netns_source: str | None = None) -> Attachment:
        """CNI ADD of the pod; ``record`` gets its netns (before ``netns_ready``) and addresses."""
        def pinned(path: str) -> None:
            record.netns = path
            netns_ready()

        attachment = await self.network.attach(
            self.namespace, record.id, network[0], network[1], cni_args={
                "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": meta.namespace,
                "K8S_POD_NAME": meta.name, "K8S_POD_INFRA_CONTAINER_ID": record.id,
                "K8S_POD_UID": meta.uid}, conf_dir=self.cni_conf_dir, netns_ready=pinned,
            netns_source=netns_source, held=True)
        record.netns = attachment.netns
        ips = [ip.ip for ip in attachment.ips]
        record.ip = ips[0] if ips else ""
        record.additional_ips = ips[1:]
        # Crash tests: an address is allocated, the record does not say which.
        fault_point("cri.sandbox.after-cni-add")
        return attachment

    @property
    def network_conf_dir(self) -> Path:
        """Where the pod network's configuration is looked for."""
        return self.cni_conf_dir or Path(self.network.conf_dir)

    def pod_network(self) -> str | None:
        """The network pods attach to, or None while no configuration is usable.

        With ``cni_conf_dir`` it is the first usable ``.conflist``/``.conf``/``.json``
        there in file-name order, as containerd's CRI loads it, read at each call (a
        file added later is used without a restart); without, ``network.cni``'s
        default network.
        """
        if self.cni_conf_dir is None:
            return BRIDGE if self.network.networks() else None
        name: str | None = self.network.first_network(self.cni_conf_dir)
        return name

    async def _undo_sandbox(self, record: SandboxRecord, made: list[str],
                            runtime: Runtime | None) -> None:
        if "task" in made and runtime is not None:
            with contextlib.suppress(MoorageError):
                await self._kill_and_delete(record.id)
        if "network" in made:
            # DEL even when ADD half-failed: the network service keeps the record until then.
            with contextlib.suppress(MoorageError):
                await self.network.detach(self.namespace, record.id)
        if "files" in made or "pins" in made:
            await anyio.to_thread.run_sync(setup.remove_files, record)
        if "record" in made:
            with contextlib.suppress(MoorageError):
                await self.containers.delete(self.namespace, record.id)

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
            if record.dir:
                # What stopping the infra process does: the namespaces go with the
                # containers (already stopped). /dev/shm and the files stay until removal.
                # An infra pod has pins too when it has a user namespace.
                await anyio.to_thread.run_sync(pins.unpin, record.dir)
            # DEL always, even if the netns is gone or ADD half-failed.
            await self.network.detach(self.namespace, sandbox_id)
            if not record.stopped:
                record.stopped = True
                await self._save_ext(sandbox_id, record)

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
            await anyio.to_thread.run_sync(setup.remove_files, record)
            with contextlib.suppress(NotFound):
                await self.containers.delete(self.namespace, sandbox_id)
            self._release(record.name, sandbox_id)
            self._netns.pop(sandbox_id, None)
            self._stats.pop(sandbox_id, None)
            self._sandbox_configs.pop(sandbox_id, None)

    async def _sandbox_state(self, record: SandboxRecord) -> int:
        if not record.infra:
            ready = record.ready and not record.stopped
            return pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY
        task = await self._task(record.id)
        ready = (not record.stopped and task is not None and task.status == Status.RUNNING)
        return pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY

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
            if filter_ is not None and not labels_match(config.labels, filter_.label_selector):
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

    async def known_sandbox(self, sandbox_id: str) -> str:
        """The full id of an existing sandbox (for PortForward); NotFound otherwise."""
        sandbox_id = await self._resolve_id(sandbox_id, "sandbox")
        await self._record(sandbox_id, "sandbox")
        return sandbox_id

