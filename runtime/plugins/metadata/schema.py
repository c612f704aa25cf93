"""What a store declares about its tables (a :class:`Schema`), and the namespaces table."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NAMESPACES", "Schema"]


@dataclass(frozen=True)
class Schema:
    """The tables one store owns in the database, as a list of migrations.

    Attributes:
        owner: Who owns the tables (``images``, ``content``...).
        migrations: Entry ``i`` takes the owner's tables from version ``i`` to
            ``i + 1``; statements separated by ``;``. Only ever appended to.
    """

    owner: str
    migrations: tuple[str, ...]

    @property
    def version(self) -> int:
        """The version the migrations reach."""
        return len(self.migrations)


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
