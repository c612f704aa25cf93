"""Wire types of the batch endpoints: one request acting on many containers.

A teardown of N containers was N requests (and, from the CLI, N processes);
``moorage containers rm A B C`` and friends now send one. The daemon acts on
every id (side by side, a few at a time) and answers 200 with one result per
id, in the order given (an id given twice is acted on once): an empty
``code`` is a success, otherwise ``code`` and ``message`` are the error that
id's single request would have answered.
"""

from __future__ import annotations

import msgspec

__all__ = ["MAX_BATCH", "BatchResult", "DeleteTasksRequest", "ItemResult", "KillTasksRequest",
           "RemoveContainersRequest"]

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


class ItemResult(msgspec.Struct, kw_only=True):
    """What happened to one id: ``code`` empty on success, else the error's code and message."""

    id: str
    code: str = ""
    message: str = ""


class BatchResult(msgspec.Struct, kw_only=True):
    """One result per distinct id, in request order."""

    results: list[ItemResult]
