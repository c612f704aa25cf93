"""The docker-style verbs ``rm``, ``stop`` and ``kill`` of many names, done by the daemon.

``moorage rm a b c`` used to look each name up, check its task and its
restart policy and act, a few requests per name. The daemon now does all of
it for every name of one request (``POST /v1/verbs/rm|stop|kill``, wire
types in :mod:`runtime.api.batch`), with the rules and messages the CLI had:

- A name is a container's id, the name ``rename`` gave it
  (:data:`~runtime.api.constants.NAME_LABEL`), or a unique prefix of its id;
  otherwise ``no such container: NAME`` (not found) or ``container NAME is
  ambiguous: ...`` (invalid argument).
- ``rm`` refuses a running (or paused) container without ``force``; ``stop``
  leaves a container that does not run as it is; ``kill`` fails on one.
- ``rm`` and ``stop`` hold the restart policy first (a container a user
  stopped is not restarted until a user starts it), as Docker does.

Every name gets a result, in the order given, duplicates included. Names are
resolved when the request arrives; those naming the same container are acted
on one after the other, in order, each after the first resolved again (so
``rm a a`` removes ``a`` once and then reports it missing, as one request
per name did); different containers go side by side, :data:`PARALLEL` at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from runtime.api.batch import MAX_BATCH, BatchResult, ItemResult
from runtime.api.constants import NAME_LABEL
from runtime.api.containers import Container
from runtime.api.tasks import Status, TaskState
from runtime.core.errors import FailedPrecondition, InvalidArgument, MoorageError, NotFound
from runtime.plugins.restart.api import RESTART_LABEL, STOPPED_LABEL
from runtime.plugins.tasks.service import TaskService, parse_signal

__all__ = ["PARALLEL", "Verbs"]

log = logging.getLogger("moorage.tasks")

#: Containers worked on at once within one request.
PARALLEL = 8

#: Task states in which a container counts as running (the CLI's ``LIVE``).
_LIVE = (Status.RUNNING, Status.PAUSED)


class Verbs:
    """``rm``, ``stop`` and ``kill`` over the task service, for names."""

    def __init__(self, service: TaskService) -> None:
        self.service = service

    async def rm(self, namespace: str, names: list[str], *, force: bool) -> BatchResult:
        """Remove each container with its task and snapshot (running ones only with ``force``)."""

        async def remove(cid: str) -> None:
            task = await self._task(namespace, cid)
            if task is not None and task.status in _LIVE and not force:
                raise FailedPrecondition(f"container {cid!r} is running: stop it first or use -f")
            await self._hold_policy(namespace, cid)
            await self.service.remove(namespace, cid, force=True, snapshot=True)

        return await self._each(namespace, names, remove)

    async def stop(self, namespace: str, names: list[str], *, signal: int | str,
                   timeout: float) -> BatchResult:
        """Each running container: ``signal`` (else its stop signal), SIGKILL after ``timeout``."""

        async def stop(cid: str) -> None:
            await self._hold_policy(namespace, cid)
            task = await self._task(namespace, cid)
            if task is None or task.status not in _LIVE:
                return
            number = parse_signal(signal) if signal not in ("", 0) else 0
            await self.service.stop(namespace, cid, signal_number=number, timeout=timeout)

        return await self._each(namespace, names, stop)

    async def kill(self, namespace: str, names: list[str], *, signal: int | str) -> BatchResult:
        """Signal each running container's init process; a container not running fails."""

        async def kill(cid: str) -> None:
            task = await self._task(namespace, cid)
            if task is None or task.status not in _LIVE:
                raise FailedPrecondition(f"container {cid!r} is not running")
            await self.service.find(namespace, cid).kill(namespace, cid, parse_signal(signal))

        return await self._each(namespace, names, kill)

    async def _task(self, namespace: str, container_id: str) -> TaskState | None:
        try:
            return await self.service.find(namespace, container_id).state(namespace,
                                                                          container_id)
        except NotFound:
            return None

    async def _hold_policy(self, namespace: str, container_id: str) -> None:
        """A user stopped the container: its restart policy waits for a user's start."""
        labels = (await self.service.containers.get(namespace, container_id)).labels
        if RESTART_LABEL in labels:
            await self.service.containers.update(namespace, container_id,
                                                 labels={STOPPED_LABEL: "true"})

    async def resolve(self, namespace: str, name: str,
                      listed: dict[str, list[Container]] | None = None) -> str:
        """The id of the container ``name`` names.

        ``listed`` keeps the namespace's containers, listed once, for the next
        calls: for names resolved before anything was acted on.

        Raises:
            NotFound: No container has that id, name or id prefix.
            InvalidArgument: The prefix is that of several containers.
        """
        try:
            return (await self.service.containers.get(namespace, name)).id
        except (NotFound, InvalidArgument):
            pass  # not an id: maybe a name or prefix still
        if listed is None:
            containers = await self.service.containers.list(namespace)
        else:
            if "all" not in listed:
                listed["all"] = await self.service.containers.list(namespace)
            containers = listed["all"]
        named = [c.id for c in containers if c.labels.get(NAME_LABEL) == name]
        if len(named) == 1:
            return named[0]
        prefixed = [c.id for c in containers if c.id.startswith(name)] if name else []
        if len(prefixed) == 1:
            return prefixed[0]
        if prefixed:
            raise InvalidArgument(f"container {name!r} is ambiguous: {', '.join(sorted(prefixed))}")
        raise NotFound(f"no such container: {name}")

    async def _each(self, namespace: str, names: list[str],
                    action: Callable[[str], Awaitable[object]]) -> BatchResult:
        if not names:
            raise InvalidArgument("names: name at least one")
        if len(names) > MAX_BATCH:
            raise InvalidArgument(f"names: at most {MAX_BATCH} per request, got {len(names)}")
        results = [ItemResult(id=name) for name in names]
        listed: dict[str, list[Container]] = {}
        by_container: dict[str, list[ItemResult]] = {}
        for item in results:
            try:
                cid = await self.resolve(namespace, item.id, listed)
            except MoorageError as exc:
                item.code, item.message = exc.code, exc.message
                continue
            by_container.setdefault(cid, []).append(item)
        limiter = anyio.CapacityLimiter(PARALLEL)

        async def one(cid: str, items: list[ItemResult]) -> None:
            async with limiter:
                for n, item in enumerate(items):
                    try:
                        # After the first, the container may be gone or renamed: look again.
                        await action(cid if n == 0 else await self.resolve(namespace, item.id))
                    except MoorageError as exc:
                        item.code, item.message = exc.code, exc.message
                    except Exception as exc:
                        # What one request per name would have answered as a 500, for this name.
                        log.exception("%s of %s failed", getattr(action, "__name__", "verb"),
                                      item.id)
                        item.code, item.message = "internal", f"{type(exc).__name__}: {exc}"

        async with anyio.create_task_group() as tg:
            for cid, items in by_container.items():
                tg.start_soon(one, cid, items)
        return BatchResult(results=results)
