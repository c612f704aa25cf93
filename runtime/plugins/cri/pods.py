"""Pod sandboxes and their containers, on the container, snapshot, network and runtime services.

:class:`Pods` is what the gRPC servicers call. It is assembled from one class
per concept: the records and lookups (:mod:`.records`), containers
(:mod:`.containers`), sandboxes (:mod:`.sandboxes`, with the pod's files and
ports in :mod:`.sandbox_setup`), statistics (:mod:`.stats`); start-up recovery
is :mod:`.recovery`, and the container events are here.

A sandbox's infra process (``catatonit -P``, PID 1 of a pod that shares its
PID namespace) runs from a tiny read-only root filesystem the plugin writes
under its root directory; other pods run none (:mod:`.pins`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread

from runtime.core.errors import MoorageError
from runtime.core.events import Exchange
from runtime.plugins.cri import sandbox_setup as setup
from runtime.plugins.cri.messages import pb
from runtime.plugins.cri.pod_metrics import PodMetrics
from runtime.plugins.cri.records import EXTENSION, KIND_LABEL, ns_of
from runtime.plugins.cri.recovery import recover
from runtime.plugins.cri.sandboxes import Sandboxes
from runtime.plugins.cri.stats import PodStats

__all__ = ["EXTENSION", "KIND_LABEL", "Pods"]


class Pods(Sandboxes, PodStats, PodMetrics):
    """The CRI RuntimeService's pods and containers."""

    async def load(self) -> None:
        """Undo what a crash left half made, rebuild the reserved names and the infra rootfs."""
        await anyio.to_thread.run_sync(
            setup.write_infra_rootfs, self.infra_rootfs, self.infra_binary)
        await anyio.to_thread.run_sync(self._searchable_state)
        await recover(self)
        for record in await self.containers.list(self.namespace):
            kind = record.labels.get(KIND_LABEL)
            ext = record.extensions.get(EXTENSION)
            if kind and isinstance(ext, dict) and "name" in ext:
                self._names[str(ext["name"])] = record.id
                if kind == "sandbox":
                    self._netns[record.id] = str(ext.get("netns", ""))

    def _searchable_state(self) -> None:
        # Searchable, not listable (as containerd's): runc 1.1 bind-mounts a pod's
        # files from inside the user namespace of a container, as an unmapped user.
        self.state.chmod(0o711)
        (self.state / "sandboxes").mkdir(mode=0o711, exist_ok=True)
        (self.state / "sandboxes").chmod(0o711)

    async def container_events(
        self, exchange: Exchange
    ) -> AsyncIterator[pb.ContainerEventResponse]:
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
                if envelope.topic in ("/tasks/exit", "/tasks/delete") and getattr(
                        event, "id", "") not in ("", container_id):
                    continue  # an exec's exit or delete, not the container's
                response = pb.ContainerEventResponse(
                    container_id=container_id,
                    container_event_type=kinds[envelope.topic],  # type: ignore[arg-type]
                    created_at=ns_of(envelope.timestamp))
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

