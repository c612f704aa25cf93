"""What a store declares about its tables (a :class:`Schema`), and the namespaces table."""

from __future__ import annotations

import sqlite3

import msgspec

__all__ = ["NAMESPACES", "Schema"]


class Schema(msgspec.Struct, frozen=True):
    """The tables one store owns in the database, as a list of migrations.

    It also answers, for the namespace store, what a namespace still holds in
    those tables: the namespace store deletes a namespace only once every
    registered schema says nothing, and reads no other owner's table itself.

    Attributes:
        owner: Who owns the tables (``images``, ``content``...).
        migrations: Entry ``i`` takes the owner's tables from version ``i`` to
            ``i + 1``; statements separated by ``;``. Only ever appended to.
        held: Tables (with a ``namespace`` column) whose rows keep their
            namespace from being deleted, each with what its rows are called
            in the refusal (``("content", "blobs")``).
        released: Tables (with a ``namespace`` column) whose rows go with their
            namespace when it is deleted, in the order to delete them (as in
            containerd, leases and ingests do not keep a namespace).
    """

    owner: str
    migrations: tuple[str, ...]
    held: tuple[tuple[str, str], ...] = ()
    released: tuple[str, ...] = ()

    @property
    def version(self) -> int:
        """The version the migrations reach."""
        return len(self.migrations)

    def holds(self, conn: sqlite3.Connection, namespace: str) -> list[str]:
        """What ``namespace`` still holds in these tables, as ``"2 images"``; empty if nothing.

        Runs inside the namespace's delete transaction, on its connection.
        """
        found = []
        for table, what in self.held:
            sql = f"SELECT count(*) FROM {table} WHERE namespace=?"
            count = conn.execute(sql, (namespace,)).fetchone()[0]
            if count:
                found.append(f"{count} {what}")
        return found

    def release(self, conn: sqlite3.Connection, namespace: str) -> None:
        """Delete the rows that go with ``namespace`` (inside its delete transaction)."""
        for table in self.released:
            conn.execute(f"DELETE FROM {table} WHERE namespace=?", (namespace,))


#: The namespaces every record is partitioned by.
NAMESPACES = Schema(
    "namespaces",
    (
        """
        CREATE TABLE IF NOT EXISTS namespaces (
            name TEXT PRIMARY KEY,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """,
    ),
)
