"""Write transactions that measure how long they held the writer lock.

The figure that matters to other plugins is not how long a collection took
but how long their writes had to wait for it: the time between getting the
lock and releasing it, commit (and its fsync) included, waiting excluded.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

from runtime.plugins.metadata.api import Database

__all__ = ["timed_write"]

T = TypeVar("T")


async def timed_write(db: Database, fn: Callable[[sqlite3.Connection], T]) -> tuple[T, float]:
    """Run ``fn(conn)`` as one write transaction; return its result and the seconds held."""

    def run() -> tuple[T, float]:
        entered: list[float] = []

        def timed(conn: sqlite3.Connection) -> T:
            # Called with the lock held and BEGIN IMMEDIATE done: the hold starts here.
            entered.append(time.perf_counter())
            return fn(conn)

        result = db.write_sync(timed)
        return result, time.perf_counter() - entered[0]

    return await anyio.to_thread.run_sync(run)
