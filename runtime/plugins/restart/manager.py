"""The restart manager: acts on ``/tasks/exit`` of containers whose labels ask for it.

* ``moorage/auto-remove=true`` (``run -d --rm``): the container, its task and
  its snapshot are removed once its init process exits.
* ``moorage/restart`` (``run --restart``): a new task is created and started,
  after a delay doubling with each restart (Docker's backoff), unless a user
  stopped it (``moorage/restart.stopped``) or ``on-failure:N`` used up its N.

At startup the manager looks at every container first (:meth:`scan`): a task
that stopped while the daemon was down is restarted or removed as its labels
say, and one that is gone (after a reboot) is started for ``always`` (and
``unless-stopped`` when no user stopped it). It subscribes to ``/tasks/exit``
only ``subscribe_delay`` seconds later, then scans again for the exits in
between: the runtime holds the exits it found at startup until somebody
listens, and those are for the API's subscribers to hear, not for a plugin
of the daemon itself to release the moment it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from runtime.api.tasks import CreateTaskRequest, Status
from runtime.core.errors import MoorageError, NotFound, Unavailable
from runtime.core.events import Exchange, SubscriberOverflow
from runtime.plugins.restart.api import (
    AUTO_REMOVE_LABEL,
    RESTART_COUNT_LABEL,
    RESTART_LABEL,
    STOPPED_LABEL,
    parse_policy,
    should_restart,
)
from runtime.plugins.tasks.api import Tasks

__all__ = ["RestartManager"]

log = logging.getLogger("moorage.restart")


class RestartManager:
    """Restarts and removes containers as their labels ask.

    Args:
        tasks: The task service (a dispatcher over the running runtimes).
        namespaces: Returns the names of every namespace.
        events: The event exchange.
        backoff: Seconds before the first restart; doubled for each one after.
        max_backoff: The longest delay between restarts.
    """

    def __init__(self, tasks: Tasks, namespaces: Callable[[], Awaitable[list[str]]],
                 events: Exchange | None, *,
                 backoff: float = 0.1, max_backoff: float = 10.0,
                 subscribe_delay: float = 10.0) -> None:
        self.tasks = tasks
        self.namespaces = namespaces
        self.events = events
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.subscribe_delay = subscribe_delay
        self._locks: dict[tuple[str, str], anyio.Lock] = {}

    def _lock(self, namespace: str, container_id: str) -> anyio.Lock:
        return self._locks.setdefault((namespace, container_id), anyio.Lock())

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Act on every init-process exit; runs until cancelled at shutdown."""
        # Started only when the exchange runs (see the plugin).
        assert self.events is not None
        events_exchange = self.events
        task_status.started()
        await self.scan(startup=True)
        await anyio.sleep(self.subscribe_delay)
        ready = False
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    subscription = events_exchange.subscribe('topic=="/tasks/exit"')
                except Unavailable:
                    break  # the exchange is closed: the daemon is stopping
                try:
                    async with subscription as events:
                        if not ready:
                            ready = True
                            tg.start_soon(self.scan)  # what exited before we listened
                        async for envelope in events:
                            event = envelope.event
                            # The init process's exit carries the container id as its id.
                            if event.id in ("", event.container_id):
                                tg.start_soon(self.exited, envelope.namespace,
                                              event.container_id, event.exit_status)
                    break
                except SubscriberOverflow as exc:
                    log.warning("restart manager fell behind: %s", exc.message)
                    tg.start_soon(self.scan)

    async def scan(self, *, startup: bool = False) -> None:
        """Act on stopped containers as an exit would; start those ``always`` wants running.

        Only at ``startup`` does ``always`` override a user's stop, as Docker
        restarts such containers when its daemon starts.
        """
        try:
            names = await self.namespaces()
        except MoorageError as exc:
            log.warning("restart manager: cannot list namespaces: %s", exc.message)
            return
        for namespace in names:
            try:
                containers = await self.tasks.containers.list(namespace)
            except MoorageError:
                continue
            for container in containers:
                labels = container.labels
                state = await self._state(namespace, container.id)
                if labels.get(AUTO_REMOVE_LABEL) == "true" or labels.get(
                        RESTART_LABEL, "no") == "on-failure" or labels.get(
                        RESTART_LABEL, "").startswith("on-failure:"):
                    if state is not None and state.status == Status.STOPPED:
                        await self.exited(namespace, container.id, state.exit_status or 0)
                    continue
                try:
                    policy, _ = parse_policy(labels.get(RESTART_LABEL, "no") or "no")
                except ValueError:
                    continue
                stopped_by_user = labels.get(STOPPED_LABEL) == "true"
                wanted = (policy == "always" and (startup or not stopped_by_user)) or (
                    policy == "unless-stopped" and not stopped_by_user)
                if wanted and (state is None or state.status == Status.STOPPED):
                    async with self._lock(namespace, container.id):
                        await self._restart(namespace, container.id, count=0)

    async def exited(self, namespace: str, container_id: str, exit_status: int) -> None:
        """The init process of ``container_id`` exited: remove or restart it if asked."""
        async with self._lock(namespace, container_id):
            try:
                container = await self.tasks.containers.get(namespace, container_id)
            except NotFound:
                return
            if container.labels.get(AUTO_REMOVE_LABEL) == "true":
                await self._remove(namespace, container_id)
                return
            if not should_restart(container.labels, exit_status):
                return
            count = int(container.labels.get(RESTART_COUNT_LABEL, "0") or 0)
            await anyio.sleep(min(self.backoff * 2 ** count, self.max_backoff))
            # A user may have stopped, removed or started it meanwhile.
            try:
                container = await self.tasks.containers.get(namespace, container_id)
            except NotFound:
                return
            if not should_restart(container.labels, exit_status):
                return
            if await self._status(namespace, container_id) != Status.STOPPED:
                return
            await self._restart(namespace, container_id, count=count + 1)

    async def _state(self, namespace: str, container_id: str) -> Any:
        try:
            runtime = self.tasks.find(namespace, container_id)
            return await runtime.state(namespace, container_id)
        except NotFound:
            return None

    async def _status(self, namespace: str, container_id: str) -> Status | None:
        state = await self._state(namespace, container_id)
        return None if state is None else state.status

    async def _remove(self, namespace: str, container_id: str) -> None:
        try:
            await self.tasks.remove(namespace, container_id, force=True, snapshot=True)
            log.info("removed container %s/%s at its exit", namespace, container_id)
        except NotFound:
            pass
        except MoorageError as exc:
            log.warning("cannot remove container %s/%s: %s", namespace, container_id,
                        exc.message)

    async def _restart(self, namespace: str, container_id: str, *, count: int) -> None:
        try:
            await self.tasks.containers.update(
                namespace, container_id, labels={RESTART_COUNT_LABEL: str(count)})
            if await self._status(namespace, container_id) is not None:
                await self.tasks.delete_task(namespace, container_id, force=True)
            await self.tasks.create(namespace, CreateTaskRequest(container_id=container_id))
            await self.tasks.find(namespace, container_id).start(namespace, container_id)
            log.info("restarted container %s/%s (restart %d)", namespace, container_id, count)
        except NotFound:
            pass
        except MoorageError as exc:
            log.warning("cannot restart container %s/%s: %s", namespace, container_id,
                        exc.message)
