"""Container records in the metadata database's ``containers`` table, one JSON record per row."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from runtime.api.containers import Container, ContainerCreate, ContainerDelete, ContainerUpdate
from runtime.core.errors import AlreadyExists, InvalidArgument, NotFound
from runtime.core.faults import fault_point
from runtime.core.filters import adapt, parse
from runtime.core.identifiers import validate_identifier, validate_labels, validate_namespace
from runtime.plugins.containers.tables import CONTAINERS, ContainerSource
from runtime.plugins.metadata.api import Database, ensure_namespace

__all__ = ["SqliteContainerStore"]

Publish = Callable[[str, str, msgspec.Struct], object]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Container)


def _load(row: sqlite3.Row) -> Container:
    container = _decoder.decode(row["record"])
    # The columns are authoritative for the times: the record is written before they are known.
    container.created_at = datetime.fromisoformat(row["created_at"])
    container.updated_at = datetime.fromisoformat(row["updated_at"])
    return container


def _check(container: Container) -> None:
    validate_identifier(container.id, "container id")
    validate_labels(container.labels)
    if not container.runtime.name:
        raise InvalidArgument(f"container {container.id!r}: runtime name must not be empty")
    if not isinstance(container.spec, dict):
        raise InvalidArgument(f"container {container.id!r}: spec must be a JSON object")


def _fields(container: Container) -> dict[str, Any]:
    """The fields filters see: ``id``, ``image``, ``runtime.name``, ``labels.<k>``..."""
    return {
        "id": container.id,
        "image": container.image,
        "runtime": {"name": container.runtime.name},
        "snapshotter": container.snapshotter,
        "snapshot_key": container.snapshot_key,
        "labels": container.labels,
    }


class SqliteContainerStore:
    """Create, read, filter, update and delete container records.

    Args:
        db: The metadata database.
        publish: ``publish(namespace, topic, event)`` of the event exchange.
    """

    def __init__(self, db: Database, publish: Publish) -> None:
        db.register(CONTAINERS, ContainerSource())
        self.db = db
        self.publish = publish

    async def create(self, namespace: str, container: Container) -> Container:
        """Store a new record; AlreadyExists if the id is taken in ``namespace``."""
        validate_namespace(namespace)
        _check(container)
        stamp = datetime.now(UTC).isoformat()
        record = _encoder.encode(msgspec.structs.replace(container, created_at=None,
                                                         updated_at=None))

        def insert(conn: sqlite3.Connection) -> None:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    "INSERT INTO containers(namespace, id, record, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (namespace, container.id, record.decode(), stamp, stamp),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"container {container.id!r} already exists") from None

        # Crash tests: before and after the one transaction that creates the record.
        fault_point("container.create.before-record")
        await self.db.write(insert)
        fault_point("container.create.after-record")
        self.publish(namespace, "/containers/create", ContainerCreate(
            id=container.id, image=container.image, runtime=container.runtime))
        return await self.get(namespace, container.id)

    async def get(self, namespace: str, id: str) -> Container:
        """One record; NotFound if absent."""
        validate_namespace(namespace)
        row = await self.db.read(lambda c: c.execute(
            "SELECT * FROM containers WHERE namespace=? AND id=?", (namespace, id)).fetchone())
        if row is None:
            raise NotFound(f"container {id!r} not found")
        return _load(row)

    async def list(self, namespace: str, filters: list[str] | None = None) -> list[Container]:
        """Records matching any of ``filters`` (none: all), sorted by id.

        Fields: ``id``, ``image``, ``runtime.name``, ``snapshotter``,
        ``snapshot_key`` and ``labels.<key>``.
        """
        validate_namespace(namespace)
        parsed = parse(filters or [])
        rows = await self.db.read(lambda c: c.execute(
            "SELECT * FROM containers WHERE namespace=? ORDER BY id", (namespace,)).fetchall())
        found = [_load(r) for r in rows]
        return [c for c in found if parsed.match(adapt(_fields(c)))]

    async def update(
        self,
        namespace: str,
        id: str,
        *,
        labels: Mapping[str, str] | None = None,
        spec: dict[str, Any] | None = None,
        image: str | None = None,
        snapshot_key: str | None = None,
        extensions: Mapping[str, Any] | None = None,
        durable: bool = True,
    ) -> Container:
        """Change the mutable fields given; labels merge and an empty value removes one.

        ``extensions`` merge too; a ``None`` value removes an extension.
        ``durable=False``: a daemon crash cannot lose the change, a power loss can
        (see :meth:`~runtime.plugins.metadata.db.Database.write_sync`).
        """
        validate_namespace(namespace)
        if labels is not None:
            validate_labels(labels)
        if spec is not None and not isinstance(spec, dict):
            raise InvalidArgument("spec must be a JSON object")

        def change(conn: sqlite3.Connection) -> Container:
            row = conn.execute("SELECT * FROM containers WHERE namespace=? AND id=?",
                               (namespace, id)).fetchone()
            if row is None:
                raise NotFound(f"container {id!r} not found")
            current = _load(row)
            if labels is not None:
                merged = {**current.labels, **labels}
                current.labels = {k: v for k, v in merged.items() if v}
            if extensions is not None:
                ext = {**current.extensions, **extensions}
                current.extensions = {k: v for k, v in ext.items() if v is not None}
            if spec is not None:
                current.spec = spec
            if image is not None:
                current.image = image
            if snapshot_key is not None:
                current.snapshot_key = snapshot_key
            record = _encoder.encode(msgspec.structs.replace(current, created_at=None,
                                                             updated_at=None))
            conn.execute("UPDATE containers SET record=?, updated_at=? WHERE namespace=? AND id=?",
                         (record.decode(), datetime.now(UTC).isoformat(), namespace, id))
            return current

        updated = await self.db.write(change, durable=durable)
        self.publish(namespace, "/containers/update", ContainerUpdate(
            id=id, image=updated.image, labels=updated.labels,
            snapshot_key=updated.snapshot_key))
        return await self.get(namespace, id)

    async def delete(self, namespace: str, id: str) -> None:
        """Remove a record; NotFound if absent."""
        validate_namespace(namespace)

        def remove(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM containers WHERE namespace=? AND id=?",
                               (namespace, id))
            if cur.rowcount == 0:
                raise NotFound(f"container {id!r} not found")

        fault_point("container.delete.before-record")
        await self.db.write(remove)
        fault_point("container.delete.after-record")
        self.publish(namespace, "/containers/delete", ContainerDelete(id=id))
