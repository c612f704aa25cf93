"""The namespaced view of the content store: per-namespace records over shared bytes.

The backend (:mod:`.store`) knows bytes and ingests; this layer keeps, in the
metadata database, which namespace sees which blob and with which labels, and
which ingest refs belong to which namespace. A blob is written to disk once
and removed from disk only when no namespace refers to it any more.

Crash safety: the backend's rename into ``blobs/`` happens before the
namespace record is written, so a crash between the two leaves an
unreferenced blob for garbage collection, never a record without bytes.

Concurrency: that same gap must not let a delete in another namespace remove
the blob (it saw no record yet). :class:`_BlobGate` keeps the removal of
unreferenced blobs apart from commits.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from datetime import datetime

import anyio

from runtime.core.errors import AlreadyExists, MoorageError, NotFound, Unavailable
from runtime.core.faults import fault_point
from runtime.core.filters import adapt, parse
from runtime.core.identifiers import validate_labels, validate_namespace
from runtime.plugins.content.api import (
    BlobExists,
    ContentCreate,
    ContentDelete,
    ContentInfo,
    ContentUsage,
    Status,
    validate_digest,
)
from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.content.local.tables import CONTENT, ContentSource
from runtime.plugins.content.local.writer import Follower, Writer
from runtime.plugins.metadata.api import (
    Database,
    Publish,
    Resource,
    attach,
    detach_everywhere,
    ensure_namespace,
    lease_exists,
    now,
)

__all__ = ["ContentService", "NamespacedWriter"]

log = logging.getLogger("moorage.content")


def _backend_ref(namespace: str, ref: str) -> str:
    # Namespaces must not collide on a ref; the backend hashes refs into
    # directory names, so any characters are safe here.
    return f"{namespace}/{ref}"


@contextlib.contextmanager
def _client_ref(backend: str, ref: str) -> Iterator[None]:
    """Name the client's ref, not the backend's, in errors of the backend store.

    The backend ref (``<namespace>/<ref>``) is an internal name: a client told
    "ref default/layer-1 locked" would look for a ref it never used.
    """
    try:
        yield
    except BlobExists:
        raise  # carries a digest, not a ref
    except MoorageError as exc:
        if backend not in exc.message:
            raise
        raise type(exc)(exc.message.replace(backend, ref)) from exc


class _Vanished(Unavailable):
    """The blob a commit was about to record was removed in the meantime."""


class _BlobGate:
    """Commits run together; removals of unreferenced blobs run alone, between them.

    A commit puts bytes into ``blobs/`` and records them for its namespace a moment
    later. A delete that found no record left, removing the blob in that moment,
    would leave a record without bytes, or fail the commit. So a removal is queued:
    it runs once no commit is in flight (by the delete itself, or else by the last
    commit to finish), as one transaction that re-checks the records; commits that
    start meanwhile wait for it. A delete returns once its removal ran or was queued.
    """

    def __init__(self, db: Database, store: ContentStore) -> None:
        self._db = db
        self._store = store
        self._commits = 0
        self._doomed: set[str] = set()
        self._sweep_done: anyio.Event | None = None  # set while a removal runs

    @contextlib.asynccontextmanager
    async def commit(self) -> AsyncIterator[None]:
        """Hold off removals while the block publishes and records a blob."""
        while self._sweep_done is not None:
            await self._sweep_done.wait()
        self._commits += 1
        try:
            yield
        finally:
            self._commits -= 1
            if self._commits == 0 and self._doomed:
                with anyio.CancelScope(shield=True):
                    await self._sweep()

    async def remove(self, digest: str) -> None:
        """Remove the blob from disk unless a namespace refers to it again by then."""
        self._doomed.add(digest)
        if self._sweep_done is not None:
            await self._sweep_done.wait()  # the running removal takes this digest too
        elif self._commits == 0:
            await self._sweep()

    async def _sweep(self) -> None:
        self._sweep_done = done = anyio.Event()
        try:
            while self._doomed:
                doomed, self._doomed = self._doomed, set()
                try:
                    await self._db.write(functools.partial(self._remove_unreferenced, doomed))
                except MoorageError as exc:
                    # The records are gone already; the bytes wait for garbage collection.
                    log.warning("removing unreferenced blobs failed: %s", exc.message)
        finally:
            self._sweep_done = None
            done.set()

    def _remove_unreferenced(self, digests: set[str], conn: sqlite3.Connection) -> None:
        # Inside the transaction: no record can appear between the check and the unlink.
        for digest in digests:
            if conn.execute("SELECT 1 FROM content WHERE digest=? LIMIT 1", (digest,)).fetchone():
                continue
            self._store.remove_blob(digest)


def _info(row: sqlite3.Row) -> ContentInfo:
    return ContentInfo(
        digest=row["digest"],
        size=row["size"],
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _add_record(
    conn: sqlite3.Connection,
    namespace: str,
    digest: str,
    size: int,
    labels: Mapping[str, str],
    lease: str | None,
) -> bool:
    """Insert the namespace's record; False if it already had one."""
    ensure_namespace(conn, namespace)
    stamp = now()
    cur = conn.execute(
        "INSERT OR IGNORE INTO content(namespace, digest, size, labels, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?)",
        (namespace, digest, size, json.dumps(dict(labels)), stamp, stamp),
    )
    if lease:
        attach(conn, namespace, lease, Resource(type="content", id=digest))
    return cur.rowcount > 0


class NamespacedWriter:
    """A backend writer bound to a namespace; commit also records the blob there."""

    def __init__(self, service: ContentService, namespace: str, ref: str, writer: Writer,
                 lease: str | None) -> None:
        self.service = service
        self.namespace = namespace
        self.ref = ref
        self.writer = writer
        self.lease = lease

    def status(self) -> Status:
        """The ingest's state, with the namespace's ref."""
        status = self.writer.status()
        return Status(ref=self.ref, offset=status.offset, total=status.total,
                      expected=status.expected, started_at=status.started_at,
                      updated_at=status.updated_at)

    async def write(self, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        """Write at ``offset`` (see the backend writer)."""
        with _client_ref(self.writer.ref, self.ref):
            await self.writer.write(data, offset)

    def follow(self) -> Follower | None:
        """A reader of the ingest's bytes as they are written (see the backend writer).

        It ends once the bytes are verified and stored as a blob, before this
        namespace's record of it is written: a caller that needs the record waits
        for :meth:`commit` too.
        """
        return self.writer.follow()

    async def commit(
        self, size: int | None = None, expected: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ContentInfo:
        """Verify and publish the blob, then record it in the namespace.

        Raises:
            FailedPrecondition: size or digest mismatch; nothing is committed.
            AlreadyExists: the namespace already had this blob.
        """
        labels = validate_labels(labels or {})
        async with self.service._gate.commit():
            try:
                with _client_ref(self.writer.ref, self.ref):
                    digest = await self.writer.commit(size, expected)
            except BlobExists as exc:
                # Committed concurrently under another ref or by another namespace:
                # the bytes are there, verified; only this namespace's record is new.
                digest = exc.digest
            # Crash tests: a blob no namespace records yet (garbage until committed again).
            fault_point("content.commit.before-record")
            try:
                info = await self.service._record(self.namespace, digest, labels, self.lease)
                # Crash tests: recorded, but the ingest row is still there.
                fault_point("content.commit.after-record")
                return info
            finally:
                # After the record: until then the ingest row names what is being committed.
                await self.service._drop_ingest(self.namespace, self.ref)

    async def close(self) -> None:
        """Release the ref; the ingest stays for a resume. Idempotent."""
        with _client_ref(self.writer.ref, self.ref):
            await self.writer.close()

    async def abort(self) -> None:
        """Drop the ingest."""
        with _client_ref(self.writer.ref, self.ref):
            await self.writer.abort()
        await self.service._drop_ingest(self.namespace, self.ref)


class ContentService:
    """Namespaced content: ingests, records, labels, reads and deletes."""

    def __init__(self, store: ContentStore, db: Database, publish: Publish) -> None:
        db.register(CONTENT, ContentSource(store))
        self.store = store
        self.db = db
        self.publish = publish
        self._gate = _BlobGate(db, store)

    # -- records --------------------------------------------------------------

    async def info(self, namespace: str, digest: str) -> ContentInfo:
        """The namespace's record of ``digest``; NotFound if it has none."""
        validate_digest(digest)
        row = await self.db.read(lambda c: c.execute(
            "SELECT * FROM content WHERE namespace=? AND digest=?", (namespace, digest)
        ).fetchone())
        if row is None:
            raise NotFound(f"content {digest} not found")
        return _info(row)

    async def list(self, namespace: str, filters: list[str] | None = None) -> list[ContentInfo]:
        """Blobs of the namespace matching any filter (``digest``, ``size``, ``labels.<k>``)."""
        flt = parse(filters or [])
        rows = await self.db.read(lambda c: c.execute(
            "SELECT * FROM content WHERE namespace=? ORDER BY digest", (namespace,)).fetchall())
        infos = [_info(r) for r in rows]
        return [i for i in infos
                if flt.match(adapt({"digest": i.digest, "size": i.size, "labels": i.labels}))]

    async def update_labels(
        self, namespace: str, digest: str, labels: Mapping[str, str]
    ) -> ContentInfo:
        """Set labels; an empty value removes one."""
        validate_digest(digest)
        validate_labels(labels)

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT labels FROM content WHERE namespace=? AND digest=?",
                               (namespace, digest)).fetchone()
            if row is None:
                raise NotFound(f"content {digest} not found")
            merged = {k: v for k, v in {**json.loads(row["labels"]), **labels}.items() if v}
            conn.execute("UPDATE content SET labels=?, updated_at=? WHERE namespace=? AND digest=?",
                         (json.dumps(merged), now(), namespace, digest))

        await self.db.write(update)
        return await self.info(namespace, digest)

    async def delete(self, namespace: str, digest: str) -> None:
        """Drop the namespace's record; the bytes go once no namespace refers to them."""
        validate_digest(digest)

        def delete(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM content WHERE namespace=? AND digest=?",
                               (namespace, digest))
            if cur.rowcount == 0:
                raise NotFound(f"content {digest} not found")
            detach_everywhere(conn, namespace, "content", digest)
            return conn.execute("SELECT 1 FROM content WHERE digest=? LIMIT 1",
                                (digest,)).fetchone() is None

        unreferenced = await self.db.write(delete)
        if unreferenced:
            await self._gate.remove(digest)
        self.publish(namespace, "/content/delete", ContentDelete(digest=digest))

    async def read(
        self, namespace: str, digest: str, offset: int = 0, size: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream a blob the namespace can see (checked before the first byte)."""
        await self.info(namespace, digest)
        return self.store.read(digest, offset, size)

    async def _record(
        self, namespace: str, digest: str, labels: Mapping[str, str], lease: str | None
    ) -> ContentInfo:
        def add(conn: sqlite3.Connection) -> tuple[bool, int]:
            # The blob is looked at inside the transaction: garbage collection unlinks
            # in one too, so a blob seen here is still there once the record is written.
            size = self.store.blob_size(digest)
            if size is None:
                raise _Vanished(f"content {digest} was removed while being committed; "
                                "upload it again")
            return _add_record(conn, namespace, digest, size, labels, lease), size

        created, size = await self.db.write(add)
        if not created:
            raise AlreadyExists(f"content {digest} already exists")
        self.publish(namespace, "/content/create", ContentCreate(digest=digest, size=size))
        return await self.info(namespace, digest)

    # -- ingests --------------------------------------------------------------

    async def open_writer(
        self,
        namespace: str,
        ref: str,
        *,
        total: int | None = None,
        expected: str | None = None,
        lease: str | None = None,
    ) -> NamespacedWriter:
        """Open or resume the namespace's ingest ``ref``.

        When ``expected`` is already stored on disk (by any namespace) nothing
        needs uploading: the namespace gains its record and AlreadyExists is
        raised, which callers treat as done.
        """
        validate_namespace(namespace)
        if expected is not None:
            validate_digest(expected)
            present = False
            async with self._gate.commit():
                if await self.store.exists(expected):
                    present = True
                    try:
                        await self._record(namespace, expected, {}, lease)
                    except AlreadyExists:
                        pass
                    except _Vanished:
                        present = False  # removed meanwhile: upload it after all
            if present:
                # Nothing is left to upload under this ref: drop a leftover ingest of it
                # (a crash after publishing leaves one), unless a writer holds it.
                with contextlib.suppress(NotFound, Unavailable):
                    await self.abort(namespace, ref)
                raise AlreadyExists(f"content {expected} already exists")
        backend = _backend_ref(namespace, ref)

        def known(conn: sqlite3.Connection) -> bool:
            # An unknown lease fails before any file is touched.
            if lease and not lease_exists(conn, namespace, lease):
                raise NotFound(f"lease {lease!r} not found")
            return conn.execute("SELECT 1 FROM ingests WHERE namespace=? AND ref=?",
                                (namespace, ref)).fetchone() is not None

        resuming = await self.db.read(known)
        with _client_ref(backend, ref):
            writer = await self.store.open_writer(backend, total=total, expected=expected)

        def register(conn: sqlite3.Connection) -> None:
            ensure_namespace(conn, namespace)
            conn.execute(
                "INSERT OR IGNORE INTO ingests(namespace, ref, backend_ref, expected) "
                "VALUES (?,?,?,?)", (namespace, ref, backend, expected or ""))
            if lease:
                attach(conn, namespace, lease, Resource(type="ingests", id=ref))

        try:
            await self.db.write(register)
        except BaseException:
            # An ingest no namespace records would never be listed, resumed or removed.
            await (writer.close() if resuming else writer.abort())
            raise
        return NamespacedWriter(self, namespace, ref, writer, lease)

    async def _drop_ingest(self, namespace: str, ref: str) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ingests WHERE namespace=? AND ref=?", (namespace, ref))
            detach_everywhere(conn, namespace, "ingests", ref)

        await self.db.write(drop)

    async def _owned(self, namespace: str, ref: str) -> str:
        row = await self.db.read(lambda c: c.execute(
            "SELECT backend_ref FROM ingests WHERE namespace=? AND ref=?", (namespace, ref)
        ).fetchone())
        if row is None:
            raise NotFound(f"ingest {ref!r} not found")
        return str(row["backend_ref"])

    async def status(self, namespace: str, ref: str) -> Status:
        """The state of the namespace's ingest ``ref``."""
        backend = await self._owned(namespace, ref)
        with _client_ref(backend, ref):
            status = await self.store.status(backend)
        return Status(ref=ref, offset=status.offset, total=status.total,
                      expected=status.expected, started_at=status.started_at,
                      updated_at=status.updated_at)

    async def list_statuses(self, namespace: str) -> builtins.list[Status]:
        """Every ingest of the namespace."""
        rows = await self.db.read(lambda c: c.execute(
            "SELECT ref FROM ingests WHERE namespace=? ORDER BY ref", (namespace,)).fetchall())
        out: builtins.list[Status] = []  # ``list`` is a method here
        for row in rows:
            try:
                out.append(await self.status(namespace, row["ref"]))
            except NotFound:
                continue
        return out

    async def abort(self, namespace: str, ref: str) -> None:
        """Delete the namespace's ingest ``ref`` (Unavailable while a writer holds it)."""
        backend = await self._owned(namespace, ref)
        with contextlib.suppress(NotFound), _client_ref(backend, ref):
            await self.store.abort(backend)
        await self._drop_ingest(namespace, ref)

    # -- figures --------------------------------------------------------------

    async def usage(self) -> ContentUsage:
        """Records and ingests per namespace, and blobs on disk, counted now."""

        def count(conn: sqlite3.Connection) -> tuple[builtins.list[sqlite3.Row], ...]:
            records = conn.execute(
                "SELECT namespace, COUNT(*), COALESCE(SUM(size), 0) FROM content "
                "GROUP BY namespace").fetchall()
            ingests = conn.execute(
                "SELECT namespace, COUNT(*) FROM ingests GROUP BY namespace").fetchall()
            return records, ingests

        records, ingests = await self.db.read(count)
        on_disk = await self.store.walk()
        return ContentUsage(
            blobs={r[0]: r[1] for r in records},
            bytes={r[0]: r[2] for r in records},
            ingests={r[0]: r[1] for r in ingests},
            stored_blobs=len(on_disk),
            stored_bytes=sum(b.size for b in on_disk),
        )
