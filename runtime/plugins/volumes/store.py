"""Volumes on disk: ``<root>/<namespace>/<name>/_data`` plus ``volume.json`` beside it.

A volume is in use while a container record of its namespace mounts its
``_data`` directory; removing one in use is refused, and prune leaves those.
The garbage collector does not know volumes: only ``rm`` and ``prune`` delete one.
"""

from __future__ import annotations

import builtins
import json
from datetime import UTC, datetime
from pathlib import Path

import anyio

from runtime.core.errors import AlreadyExists, FailedPrecondition, NotFound
from runtime.core.identifiers import validate_identifier, validate_labels
from runtime.core.locks import KeyedLocks
from runtime.plugins.containers.api import ContainerStore
from runtime.plugins.volumes.api import Volume

__all__ = ["VolumeStore"]


class VolumeStore:
    """Named volumes of every namespace under ``root``.

    Args:
        root: The plugin's persistent directory.
        containers: The container store (to tell which volumes are in use).
    """

    def __init__(self, root: Path, containers: ContainerStore) -> None:
        self.root = root
        self.containers = containers
        self._locks = KeyedLocks()

    def _dir(self, namespace: str, name: str) -> Path:
        return self.root / namespace / validate_identifier(name, "volume name")

    async def _users(self, namespace: str) -> dict[str, list[str]]:
        """Mountpoint -> ids of the containers mounting it."""
        users: dict[str, list[str]] = {}
        for container in await self.containers.list(namespace):
            for mount in container.spec.get("mounts") or []:
                users.setdefault(str(mount.get("source", "")), []).append(container.id)
        return users

    def _read(self, directory: Path, users: dict[str, list[str]]) -> Volume:
        try:
            meta = json.loads((directory / "volume.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"volume {directory.name!r} not found") from None
        mountpoint = str(directory / "_data")
        return Volume(name=directory.name, mountpoint=mountpoint,
                      labels=dict(meta.get("labels") or {}),
                      created_at=datetime.fromisoformat(meta["created_at"]),
                      used_by=sorted(set(users.get(mountpoint, []))))

    async def create(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                     *, exist_ok: bool = False) -> Volume:
        """Make a volume (``exist_ok``: or answer the existing one)."""
        directory = self._dir(namespace, name)
        labels = validate_labels(labels or {})
        async with self._locks.hold(f"{namespace}/{name}"):
            if (directory / "volume.json").exists():
                if not exist_ok:
                    raise AlreadyExists(f"volume {name!r} already exists")
                return self._read(directory, await self._users(namespace))
            (directory / "_data").mkdir(parents=True, exist_ok=True)
            meta = {"labels": labels, "created_at": datetime.now(UTC).isoformat()}
            tmp = directory / "volume.json.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.replace(directory / "volume.json")
            return self._read(directory, {})

    async def get(self, namespace: str, name: str) -> Volume:
        """One volume; NotFound if absent."""
        return self._read(self._dir(namespace, name), await self._users(namespace))

    async def list(self, namespace: str) -> list[Volume]:
        """Every volume of the namespace, by name."""
        base = self.root / namespace
        if not base.is_dir():
            return []
        users = await self._users(namespace)
        found = []
        for directory in sorted(base.iterdir()):
            if (directory / "volume.json").exists():
                found.append(self._read(directory, users))
        return found

    async def remove(self, namespace: str, name: str) -> None:
        """Delete a volume and its data; FailedPrecondition while a container mounts it."""
        directory = self._dir(namespace, name)
        async with self._locks.hold(f"{namespace}/{name}"):
            volume = self._read(directory, await self._users(namespace))
            if volume.used_by:
                raise FailedPrecondition(f"volume {name!r} is in use by container "
                                         f"{', '.join(volume.used_by)}")
            # The record goes first: a half-deleted directory is no volume any more.
            (directory / "volume.json").unlink()
            import shutil

            await anyio.to_thread.run_sync(shutil.rmtree, directory, True)

    async def prune(self, namespace: str) -> builtins.list[str]:
        """Remove every volume no container mounts; their names."""
        removed: builtins.list[str] = []
        for volume in await self.list(namespace):
            if not volume.used_by:
                try:
                    await self.remove(namespace, volume.name)
                    removed.append(volume.name)
                except (NotFound, FailedPrecondition):
                    pass  # removed or taken meanwhile
        return removed
