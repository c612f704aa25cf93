"""The change log: which records were inserted or updated while a mark ran.

Implemented with SQLite ``TEMP`` triggers on the metadata connection: every
plugin writes through that one connection (:class:`Database`), so the
triggers see every write, inside the writer's own transaction, whatever the
plugin and whether or not it publishes an event or bumps a timestamp. A
``TEMP`` trigger lives in the connection, not in the database file: the
schema stays its owners', and a crash leaves nothing behind.

The triggers only log while a collection is marking (a flag in a temp
table), so a write between collections costs one read of a one-row temp table.
Deletions are not logged: removing a record never makes anything else
reachable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from runtime.plugins.gc.api import Node, Source

__all__ = ["drain", "start", "stop"]


def _install(conn: sqlite3.Connection, sources: Iterable[Source]) -> None:
    """Create the temp tables and the triggers this connection lacks (idempotent).

    Each source names the tables it logs and how a row maps to a node
    (:attr:`~runtime.plugins.gc.api.Source.logged`); a source registered
    since the last call gets its triggers now.
    """
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS gc_log "
        "(kind TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL)"
    )
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS gc_logging (active INTEGER NOT NULL)")
    if conn.execute("SELECT count(*) FROM temp.gc_logging").fetchone()[0] == 0:
        conn.execute("INSERT INTO temp.gc_logging VALUES (0)")
    for source in sources:
        for table, (kind, key) in source.logged.items():
            for op in ("INSERT", "UPDATE"):
                # Trigger bodies may not qualify table names; temp tables shadow main ones anyway.
                conn.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS gc_log_{table}_{op.lower()} "
                    f"AFTER {op} ON main.{table} WHEN (SELECT active FROM gc_logging) "
                    f"BEGIN INSERT INTO gc_log(kind, namespace, key) "
                    f"VALUES ({kind}, NEW.namespace, {key}); END"
                )


def start(conn: sqlite3.Connection, sources: Iterable[Source]) -> None:
    """Empty the log and start logging; call inside a write transaction."""
    _install(conn, sources)
    conn.execute("DELETE FROM temp.gc_log")
    conn.execute("UPDATE temp.gc_logging SET active=1")


def drain(conn: sqlite3.Connection, sources: Iterable[Source]) -> set[Node]:
    """Stop logging and return what was logged; call inside the exclusive phase."""
    _install(conn, sources)
    logged = {
        (r[0], r[1], r[2]) for r in conn.execute("SELECT kind, namespace, key FROM temp.gc_log")
    }
    stop(conn, sources)
    return logged


def stop(conn: sqlite3.Connection, sources: Iterable[Source]) -> None:
    """Stop logging and empty the log (also after a failed collection)."""
    _install(conn, sources)
    conn.execute("UPDATE temp.gc_logging SET active=0")
    conn.execute("DELETE FROM temp.gc_log")
