"""Namespaces: created explicitly or by the first write, deleted only when empty."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime

from runtime.core.errors import AlreadyExists, FailedPrecondition, NotFound
from runtime.core.identifiers import validate_labels, validate_namespace
from runtime.plugins.metadata.api import (
    Namespace,
    NamespaceCreate,
    NamespaceDelete,
    NamespaceUpdate,
    Publish,
    ensure_namespace,
    now,
)
from runtime.plugins.metadata.db import Database

__all__ = ["NamespaceStore", "ensure_namespace", "now"]

def _row(row: sqlite3.Row) -> Namespace:
    return Namespace(
        name=row["name"],
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class NamespaceStore:
    """Create, list, label and delete namespaces."""

    def __init__(self, db: Database, publish: Publish) -> None:
        self.db = db
        self.publish = publish

    async def list(self) -> list[Namespace]:
        """Every namespace, sorted by name."""
        rows = await self.db.read(
            lambda c: c.execute("SELECT * FROM namespaces ORDER BY name").fetchall()
        )
        return [_row(r) for r in rows]

    async def get(self, name: str) -> Namespace:
        """One namespace, or NotFound."""
        validate_namespace(name)
        row = await self.db.read(
            lambda c: c.execute("SELECT * FROM namespaces WHERE name=?", (name,)).fetchone()
        )
        if row is None:
            raise NotFound(f"namespace {name!r} not found")
        return _row(row)

    async def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create a namespace; AlreadyExists if it exists."""
        validate_namespace(name)
        labels = validate_labels(labels or {})

        def insert(conn: sqlite3.Connection) -> None:
            stamp = now()
            try:
                conn.execute(
                    "INSERT INTO namespaces(name, labels, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?)",
                    (name, json.dumps(labels), stamp, stamp),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"namespace {name!r} already exists") from None

        await self.db.write(insert)
        self.publish(name, "/namespaces/create", NamespaceCreate(name=name, labels=labels))
        return await self.get(name)

    async def update_labels(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set labels; an empty value removes that label."""
        validate_namespace(name)
        validate_labels(labels)

        def update(conn: sqlite3.Connection) -> dict[str, str]:
            row = conn.execute("SELECT labels FROM namespaces WHERE name=?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"namespace {name!r} not found")
            merged = {**json.loads(row["labels"]), **labels}
            merged = {k: v for k, v in merged.items() if v}
            conn.execute(
                "UPDATE namespaces SET labels=?, updated_at=? WHERE name=?",
                (json.dumps(merged), now(), name),
            )
            return merged

        merged = await self.db.write(update)
        self.publish(name, "/namespaces/update", NamespaceUpdate(name=name, labels=merged))
        return await self.get(name)

    async def delete(self, name: str) -> None:
        """Delete an empty namespace; FailedPrecondition naming what it still holds.

        Every store registered with the database says what the namespace still
        holds in its tables and drops what goes with it (:meth:`Schema.holds`,
        :meth:`Schema.release`); this store reads no other store's table.
        """
        validate_namespace(name)

        def delete(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone() is None:
                raise NotFound(f"namespace {name!r} not found")
            schemas = self.db.schemas
            held = [what for schema in schemas for what in schema.holds(conn, name)]
            if held:
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has: {', '.join(held)}"
                )
            for schema in schemas:
                schema.release(conn, name)
            try:
                conn.execute("DELETE FROM namespaces WHERE name=?", (name,))
            except sqlite3.IntegrityError:
                # Rows of a store not running this time (its tables carry a
                # foreign key to the namespace): it is not there to be asked.
                absent = ", ".join(self.db.owners_not_registered_in(conn)) or "unknown"
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has records "
                    f"of stores not running: {absent}"
                ) from None

        await self.db.write(delete)
        self.publish(name, "/namespaces/delete", NamespaceDelete(name=name))
