"""Wire types of the batch endpoints: one request acting on many containers.

A teardown of N containers was N requests (and, from the CLI, N processes);
``moorage containers rm A B C`` and friends now send one. The daemon acts on
every id (side by side, a few at a time) and answers 200 with one result per
id, in the order given (an id given twice is acted on once): an empty
``code`` is a success, otherwise ``code`` and ``message`` are the error that
id's single request would have answered.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["MAX_BATCH", "BatchResult", "DeleteTasksRequest", "ItemResult", "KillNamedRequest",
           "KillTasksRequest", "RemoveContainersRequest", "RemoveNamedRequest", "StopNamedRequest"]

#: The most ids one request may name.
MAX_BATCH = 1024


class _Batch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ids: list[str]


class RemoveContainersRequest(_Batch):
    """``POST /v1/run/remove``: as ``DELETE /v1/run/{id}`` for each id.

    Attributes:
        ids: The containers.
        force: Delete each one's task too, killing it first if it runs.
        snapshot: Remove each one's snapshot too.
    """

    force: bool = False
    snapshot: bool = False


class KillTasksRequest(_Batch):
    """``POST /v1/tasks/kill``: as ``POST /v1/tasks/{id}/kill`` for each id (init processes)."""

    signal: int | str = 15
    all: bool = False


class DeleteTasksRequest(_Batch):
    """``POST /v1/tasks/delete``: ``DELETE /v1/tasks/{id}`` for each id (``force``: kill first)."""

    force: bool = False


class _Named(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    names: list[str]


class RemoveNamedRequest(_Named):
    """``POST /v1/verbs/rm``: ``moorage rm [-f] NAME...``.

    A container whose task runs (or is paused) is refused unless ``force``; the
    restart policy is held, then the container goes with its task and snapshot.
    """

    force: bool = False


class StopNamedRequest(_Named):
    """``POST /v1/verbs/stop``: ``moorage stop [-t S] [-s SIG] NAME...``.

    The restart policy is held; a running task gets ``signal`` (empty: its stop
    signal), then SIGKILL after ``timeout`` seconds. A container not running is
    left as it is (a success).
    """

    signal: int | str = ""
    timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0


class KillNamedRequest(_Named):
    """``POST /v1/verbs/kill``: ``moorage kill [-s SIG] NAME...``; a container not running fails."""

    signal: int | str = "SIGKILL"


class ItemResult(msgspec.Struct, kw_only=True):
    """What happened to one id: ``code`` empty on success, else the error's code and message."""

    id: str
    code: str = ""
    message: str = ""


class BatchResult(msgspec.Struct, kw_only=True):
    """One result per distinct id (per name given, for ``/v1/verbs``), in request order."""

    results: list[ItemResult]
