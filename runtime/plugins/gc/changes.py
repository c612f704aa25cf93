"""The change log: which records were inserted or updated while a mark ran.

Implemented with SQLite ``TEMP`` triggers on the metadata connection: every
plugin writes through that one connection (:class:`Database`), so the
triggers see every write, inside the writer's own transaction, whatever the
plugin and whether or not it publishes an event or bumps a timestamp. A
``TEMP`` trigger lives in the connection, not in the database file: the
schema stays the metadata plugin's, and a crash leaves nothing behind.

The triggers only log while a collection is marking (a flag in a temp
table), so a write between collections costs one read of a one-row temp table.
Deletions are not logged: removing a record never makes anything else
reachable.
"""

from __future__ import annotations

import sqlite3

from runtime.plugins.gc.graph import Node

__all__ = ["drain", "start", "stop"]

# table -> (node kind, node key), as SQL expressions over NEW.
_LOGGED = {
    "content": ("'content'", "NEW.digest"),
    "images": ("'images'", "NEW.name"),
    "containers": ("'containers'", "NEW.id"),
    "leases": ("'leases'", "NEW.id"),
    "ingests": ("'ingests'", "NEW.ref"),
    "snapshots": ("'snapshots/' || NEW.snapshotter", "NEW.key"),
    # A resource newly held by a lease: log the lease, not the resource. The
    # rescue then reaches the resource through the lease's edges, with the
    # lease's rules: through a flat one, what the resource refers to is not
    # kept (logged as a root of its own, it was, for one collection only).
    "lease_resources": ("'leases'", "NEW.lease"),
}


def _install(conn: sqlite3.Connection) -> None:
    """Create the temp tables and triggers if this connection lacks them (idempotent)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS gc_log "
        "(kind TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL)"
    )
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS gc_logging (active INTEGER NOT NULL)")
    if conn.execute("SELECT count(*) FROM temp.gc_logging").fetchone()[0] == 0:
        conn.execute("INSERT INTO temp.gc_logging VALUES (0)")
    for table, (kind, key) in _LOGGED.items():
        for op in ("INSERT", "UPDATE"):
            # Trigger bodies may not qualify table names; temp tables shadow main ones anyway.
            conn.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS gc_log_{table}_{op.lower()} "
                f"AFTER {op} ON main.{table} WHEN (SELECT active FROM gc_logging) "
                f"BEGIN INSERT INTO gc_log(kind, namespace, key) "
                f"VALUES ({kind}, NEW.namespace, {key}); END"
            )


def start(conn: sqlite3.Connection) -> None:
    """Empty the log and start logging; call inside a write transaction."""
    _install(conn)
    conn.execute("DELETE FROM temp.gc_log")
    conn.execute("UPDATE temp.gc_logging SET active=1")


def drain(conn: sqlite3.Connection) -> set[Node]:
    """Stop logging and return what was logged; call inside the exclusive phase."""
    _install(conn)
    logged = {
        (r[0], r[1], r[2]) for r in conn.execute("SELECT kind, namespace, key FROM temp.gc_log")
    }
    stop(conn)
    return logged


def stop(conn: sqlite3.Connection) -> None:
    """Stop logging and empty the log (also after a failed collection)."""
    _install(conn)
    conn.execute("UPDATE temp.gc_logging SET active=0")
    conn.execute("DELETE FROM temp.gc_log")
