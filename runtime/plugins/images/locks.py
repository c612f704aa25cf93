"""Keyed locks: the duplication suppressor that makes concurrent pulls share work.

Two pulls of images with common layers take ``blob://<digest>`` before
fetching a blob and ``sn://<snapshotter>/<chainID>`` before unpacking a layer.
The second one waits, then finds the blob or snapshot present and skips it,
so each shared layer is downloaded and applied once. A lock exists only while
somebody holds or waits for it.
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
