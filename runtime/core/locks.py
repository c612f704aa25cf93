"""Keyed locks: one lock per key, existing only while somebody holds or waits for it.

A generic tool several plugins use, hence in the core. Examples: two pulls of
images with common layers take ``blob://<digest>`` before fetching a blob and
``sn://<snapshotter>/<chainID>`` before unpacking a layer, so the second one
waits, finds the blob or snapshot present and skips it; the snapshot service
holds ``(namespace, key)`` from the check that a key is free to the record
that takes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final

import anyio

__all__ = ["KeyedLocks"]


@final
class KeyedLocks:
    """A lock per key, created on first use and dropped when nobody uses it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        """Hold the lock of ``key`` for the block.

        Yields:
            ``True`` if somebody else held it while we waited (the work it
            protects has probably been done meanwhile).
        """
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[key] = (lock, users + 1)
        waited = lock.locked()
        try:
            async with lock:
                yield waited
        finally:
            lock_, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
