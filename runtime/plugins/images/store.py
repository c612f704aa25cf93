"""Image records in the metadata database (table ``images``), with containerd's rules.

A record names a root descriptor; the bytes live in the content store. Writes
validate what containerd validates: a non-empty name, a well-formed target
digest, a positive size and a media type. Filters see ``name``,
``target.digest``, ``target.mediatype``, ``target.size``, ``labels.<k>`` and
``annotations.<k>`` (the target's annotations).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.core.filters import adapt, parse
from runtime.core.identifiers import validate_labels, validate_namespace
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.content.api import validate_digest
from runtime.plugins.images.api import Image, ImageCreate, ImageDelete, ImageUpdate
from runtime.plugins.images.tables import IMAGES, ImageSource
from runtime.plugins.metadata.api import Database, detach_everywhere, ensure_namespace, now

__all__ = ["ImageStore", "validate_image"]

Publish = Callable[[str, str, msgspec.Struct], object]

_MAX_NAME = 4096


def validate_image(image: Image) -> None:
    """Check what every write of an image must satisfy.

    Raises:
        InvalidArgument: The name is empty or too long, the target is malformed,
            or a label is invalid.
    """
    if not image.name or len(image.name) > _MAX_NAME or any(c.isspace() for c in image.name):
        raise InvalidArgument(
            f"image name {image.name[:80]!r} must be 1-{_MAX_NAME} characters without whitespace"
        )
    target = image.target
    try:
        validate_digest(target.digest)
    except InvalidArgument as exc:
        raise InvalidArgument(f"image {image.name}: target: {exc}") from None
    if target.size <= 0:
        raise InvalidArgument(f"image {image.name}: target size must be positive")
    if not target.mediaType:
        raise InvalidArgument(f"image {image.name}: target media type must be set")
    validate_labels(image.labels)


def _row(row: sqlite3.Row) -> Image:
    return Image(
        name=row["name"],
        target=msgspec.json.decode(row["target"], type=Descriptor),
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _adaptor(image: Image) -> Any:
    return adapt(
        {
            "name": image.name,
            "target": {
                "digest": image.target.digest,
                "mediatype": image.target.mediaType,
                "size": image.target.size,
            },
            "labels": image.labels,
            "annotations": image.target.annotations,
        }
    )


def _apply_fieldpaths(old: Image, new: Image, fieldpaths: Sequence[str]) -> Image:
    """The record after an update of ``fieldpaths`` (containerd's update semantics).

    No fieldpaths replace labels and target; ``labels``/``annotations`` replace
    the whole map; ``labels.<k>``/``annotations.<k>`` set (or, with an empty or
    missing value, remove) one key; ``target`` replaces the descriptor.
    """
    if not fieldpaths:
        return Image(
            name=old.name, target=new.target, labels=dict(new.labels), created_at=old.created_at
        )
    labels = dict(old.labels)
    target = old.target
    annotations = dict(old.target.annotations)
    for path in fieldpaths:
        head, _, key = path.partition(".")
        if head == "labels" and not key:
            labels = dict(new.labels)
        elif head == "labels":
            value = new.labels.get(key, "")
            if value:
                labels[key] = value
            else:
                labels.pop(key, None)
        elif head == "target" and not key:
            target = new.target
            annotations = dict(new.target.annotations)
        elif head == "annotations" and not key:
            annotations = dict(new.target.annotations)
        elif head == "annotations":
            value = new.target.annotations.get(key, "")
            if value:
                annotations[key] = value
            else:
                annotations.pop(key, None)
        else:
            raise InvalidArgument(
                f"cannot update {path!r}: use labels[.KEY], annotations[.KEY] or target"
            )
    target = msgspec.structs.replace(target, annotations=annotations)
    return Image(name=old.name, target=target, labels=labels, created_at=old.created_at)


class ImageStore:
    """Create, list, update and delete image records, per namespace; emits events."""

    def __init__(self, db: Database, publish: Publish) -> None:
        db.register(IMAGES, ImageSource())
        self.db = db
        self.publish = publish

    async def get(self, namespace: str, name: str) -> Image:
        """One image, or NotFound."""
        validate_namespace(namespace)
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM images WHERE namespace=? AND name=?", (namespace, name)
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"image {name!r} not found")
        return _row(row)

    async def list(self, namespace: str, filters: Sequence[str] = ()) -> list[Image]:
        """Images of the namespace matching any filter, sorted by name."""
        validate_namespace(namespace)
        flt = parse(list(filters))
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM images WHERE namespace=? ORDER BY name", (namespace,)
            ).fetchall()
        )
        images = [_row(r) for r in rows]
        return [i for i in images if flt.match(_adaptor(i))]

    async def create(self, namespace: str, image: Image) -> Image:
        """Record a new image; AlreadyExists if the name is taken."""
        validate_namespace(namespace)
        validate_image(image)
        target = msgspec.json.encode(image.target).decode()

        def insert(conn: sqlite3.Connection) -> None:
            ensure_namespace(conn, namespace)
            stamp = now()
            try:
                conn.execute(
                    "INSERT INTO images(namespace, name, target, labels, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (namespace, image.name, target, json.dumps(image.labels), stamp, stamp),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"image {image.name!r} already exists") from None

        await self.db.write(insert)
        self.publish(
            namespace, "/images/create", ImageCreate(name=image.name, labels=dict(image.labels))
        )
        return await self.get(namespace, image.name)

    async def update(self, namespace: str, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        """Update the record named ``image.name`` (see :func:`_apply_fieldpaths`)."""
        validate_namespace(namespace)
        validate_labels(image.labels)

        def update(conn: sqlite3.Connection) -> Image:
            row = conn.execute(
                "SELECT * FROM images WHERE namespace=? AND name=?", (namespace, image.name)
            ).fetchone()
            if row is None:
                raise NotFound(f"image {image.name!r} not found")
            merged = _apply_fieldpaths(_row(row), image, fieldpaths)
            validate_image(merged)
            conn.execute(
                "UPDATE images SET target=?, labels=?, updated_at=? WHERE namespace=? AND name=?",
                (
                    msgspec.json.encode(merged.target).decode(),
                    json.dumps(merged.labels),
                    now(),
                    namespace,
                    image.name,
                ),
            )
            return merged

        merged = await self.db.write(update)
        self.publish(
            namespace, "/images/update", ImageUpdate(name=merged.name, labels=dict(merged.labels))
        )
        return await self.get(namespace, image.name)

    async def put(self, namespace: str, image: Image) -> Image:
        """Create the image, or update its target and labels if it exists (pull, import)."""
        try:
            return await self.create(namespace, image)
        except AlreadyExists:
            return await self.update(namespace, image, ("target", "labels"))

    async def delete(self, namespace: str, name: str, *, target: str = "") -> None:
        """Delete the record; with ``target``, only if it still points at that digest.

        Raises:
            NotFound: No such image.
            FailedPrecondition: ``target`` is given and differs from the record's.
        """
        validate_namespace(namespace)

        def delete(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT target FROM images WHERE namespace=? AND name=?", (namespace, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"image {name!r} not found")
            if target and json.loads(row["target"]).get("digest") != target:
                raise FailedPrecondition(f"image {name!r} no longer points at {target}")
            conn.execute("DELETE FROM images WHERE namespace=? AND name=?", (namespace, name))
            detach_everywhere(conn, namespace, "images", name)

        await self.db.write(delete)
        self.publish(namespace, "/images/delete", ImageDelete(name=name))

    async def set_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> Image:
        """Set (or, with empty values, remove) some labels."""
        current = await self.get(namespace, name)
        return await self.update(
            namespace,
            Image(name=name, target=current.target, labels=dict(labels)),
            tuple(f"labels.{k}" for k in labels),
        )
