"""One snapshotter seen through namespaces: user keys mapped to backend keys.

Records live in the metadata database (table ``snapshots``): for each
namespace, snapshotter and user key, the backend key, the parent's user name,
the kind and the labels. Backend keys are ``<namespace>/<n>/<key>`` so that
namespaces never collide in the backend.

Committed layers are shared between namespaces the way containerd shares
remotely-unpacked layers: a ``prepare`` whose labels carry
``containerd.io/snapshot.ref=<name>`` adopts a committed backend snapshot of
that name (same parent chain) from another namespace, records it in this one
and answers AlreadyExists, so the unpacker skips the layer. A backend snapshot
is removed only when no namespace record points at it.

Crash safety: backend changes come first, records after, so a crash between
the two leaves only unreferenced backend snapshots, which cleanup removes. A
commit is the exception: once the backend has renamed the active snapshot, the
active record points at nothing. The backend commit therefore carries the
record's intent in the label :data:`COMMIT_LABEL`, and :meth:`recover` (run at
start) finishes such commits from it, or drops a record whose backend snapshot
is gone for good.

Concurrency with garbage collection and cleanup: the backend is asked outside
any transaction, so a collection can delete records, and remove backend
snapshots, between a write's backend half and its record. Two rules keep the
store consistent (every record's backend snapshot and parent record exist):

* The record is written only if what the backend half relied on is still
  recorded, checked in the record's own transaction: the parent record,
  still the same layer, for a prepare or view; the active record for a
  commit. Otherwise the backend half is undone and NotFound raised, as if
  the collection had run first. (containerd gets there by holding the
  database's write transaction across the backend call; here that would
  hold every writer back for as long as a layer takes to copy.)
* A backend snapshot is *in flight* from just before the backend makes it
  until its record is written or it is undone (:meth:`in_flight`). Cleanup
  and the collector's disk phase leave in-flight snapshots alone, and look
  at the in-flight set before the records: a snapshot is then either still
  in flight or already recorded when they look, never neither.

Concurrency between writers of the same key: keys and names share one space
per namespace, and each write checks that its key is free, asks the backend,
then records. A commit cannot lose the race at the record (the backend has
already consumed the active snapshot by then), so prepare, view and commit
hold a lock per (namespace, key) across the three steps: the daemon is the
only writer of these records, so a free key stays free until recorded.
"""


from __future__ import annotations

__all__ = ["COMMIT_LABEL", "SNAPSHOT_REF_LABEL", "NamespacedSnapshotter"]
from runtime.plugins.snapshots.service.cleanup import SnapshotCleanup
from runtime.plugins.snapshots.service.commit import SnapshotCommits
from runtime.plugins.snapshots.service.create import SnapshotCreation
from runtime.plugins.snapshots.service.records import COMMIT_LABEL, SNAPSHOT_REF_LABEL

__all__ = ["COMMIT_LABEL", "SNAPSHOT_REF_LABEL", "NamespacedSnapshotter"]


class NamespacedSnapshotter(SnapshotCreation, SnapshotCommits, SnapshotCleanup):
    """The namespaced face of one backend; every method takes the namespace first.

    Records and queries come from :class:`~.records.SnapshotRecords`; creation from
    :mod:`.create`, commits and recovery from :mod:`.commit`, removal from :mod:`.cleanup`.
    """
