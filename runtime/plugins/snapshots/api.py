"""The snapshotter contract: the only module other plugins import from this package.

A *snapshotter* manages layered filesystems, after containerd's model. Every
snapshot is a directory tree identified by a string; there are three kinds:

* **active** (:attr:`Kind.ACTIVE`): writable, made by :meth:`Snapshotter.prepare`
  and named by its *key*. It is where a layer is unpacked or a container runs.
* **view** (:attr:`Kind.VIEW`): read-only, made by :meth:`Snapshotter.view`, also
  named by its key. It is how one looks inside a committed chain.
* **committed** (:attr:`Kind.COMMITTED`): immutable, made only by
  :meth:`Snapshotter.commit` of an active snapshot, and named by its *name*.

Rules every backend obeys (the conformance suite in
:mod:`runtime.testing.snapshotter` checks each of them):

* Keys and names share one key space: creating or committing to a string that
  is already taken raises :class:`~runtime.core.errors.AlreadyExists`.
* Only a committed snapshot may be a parent; ``parent=""`` means the empty
  filesystem. A parent that is not committed raises
  :class:`~runtime.core.errors.InvalidArgument` (as containerd does).
* Only an active snapshot can be committed; committing a view or a committed
  snapshot raises :class:`~runtime.core.errors.FailedPrecondition`. The commit
  gives the new committed snapshot the active's parent and removes the key.
* A snapshot with children cannot be removed
  (:class:`~runtime.core.errors.FailedPrecondition`).
* :meth:`Snapshotter.mounts` only exists for active and view snapshots; for a
  committed one it raises :class:`~runtime.core.errors.FailedPrecondition`.
* An unknown key, name or parent raises :class:`~runtime.core.errors.NotFound`;
  an empty key raises :class:`~runtime.core.errors.InvalidArgument`.

Backends are *not namespaced*: they see plain strings. ``service.snapshots``
wraps each one (:class:`NamespacedSnapshots`, looked up by name through
:class:`Snapshots`) and maps the user's ``<namespace>``-scoped keys to backend
keys; other plugins hold that service, never a backend.

Mounts are returned, never performed: the caller (the runtime, the diff
service, a test) mounts them, typically with
:func:`runtime.pkg.mount.mount_all`, which copes with overlay
option strings longer than a page.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec

from runtime.api.mounts import Mount

__all__ = [
    "Info",
    "Kind",
    "LocalSnapshotter",
    "Mount",
    "NamespacedSnapshots",
    "SnapshotCount",
    "SnapshotCounts",
    "Snapshots",
    "Snapshotter",
    "Usage",
]


class Kind(StrEnum):
    """The kind of a snapshot; see the module docstring for what each one allows."""

    ACTIVE = "active"  # writable, named by key, may be committed
    VIEW = "view"  # read-only, named by key, never a parent
    COMMITTED = "committed"  # immutable, named by name, the only possible parent


class Info(msgspec.Struct, frozen=True, kw_only=True):
    """What a snapshotter records about one snapshot.

    Attributes:
        kind: Active, view or committed.
        name: The key (active, view) or name (committed).
        parent: The committed parent's name, ``""`` for none.
        labels: Free-form labels, replaced as a whole by ``update``.
        created_at: When the snapshot was created (for a committed snapshot:
            when it was committed), timezone-aware UTC.
        updated_at: When the labels were last changed, timezone-aware UTC.
    """

    kind: Kind
    name: str
    parent: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Disk usage of one snapshot, excluding what its parents hold.

    For an active snapshot it is measured live; for a committed one it was
    recorded at commit time; a view uses nothing of its own.

    Attributes:
        size: Bytes allocated on disk (``st_blocks * 512``, hardlinks once).
        inodes: Inodes used, the snapshot's own root directory included.
    """

    size: int = 0
    inodes: int = 0


class SnapshotCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many snapshots of one kind a namespace records on one snapshotter."""

    snapshotter: str
    namespace: str
    kind: Kind
    count: int


class SnapshotCounts(Protocol):
    """What ``service.snapshots`` tells the metrics plugin about its records."""

    async def counts(self) -> list[SnapshotCount]:
        """Records per snapshotter, namespace and kind (stopped snapshotters' too), sorted."""
        ...


@runtime_checkable
class Snapshotter(Protocol):
    """A snapshotter backend, keyed by plain strings (see the module docstring).

    All methods are coroutines; implementations run blocking filesystem and
    database work in worker threads so the event loop never stalls.
    """

    async def stat(self, key: str) -> Info:
        """Return the info of the snapshot named ``key``.

        Raises:
            NotFound: No snapshot has that key or name.
        """
        ...

    async def update(self, key: str, labels: Mapping[str, str]) -> Info:
        """Replace the labels of ``key`` with ``labels`` and return the new info.

        Raises:
            NotFound: No snapshot has that key or name.
        """
        ...

    async def usage(self, key: str) -> Usage:
        """Return the disk usage of ``key`` itself, parents excluded.

        Raises:
            NotFound: No snapshot has that key or name.
        """
        ...

    async def mounts(self, key: str) -> list[Mount]:
        """Return the mounts of an active or view snapshot, as ``prepare`` did.

        Raises:
            NotFound: No snapshot has that key.
            FailedPrecondition: ``key`` names a committed snapshot.
        """
        ...

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create a writable (active) snapshot ``key`` on top of ``parent``.

        Args:
            key: The new snapshot's key.
            parent: A committed snapshot's name, or ``""`` for an empty tree.
            labels: Labels of the new snapshot.

        Returns:
            The mounts that present the snapshot read-write.

        Raises:
            AlreadyExists: ``key`` is taken by any snapshot.
            NotFound: ``parent`` does not exist.
            InvalidArgument: ``parent`` is not committed, or ``key`` is empty.
        """
        ...

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create a read-only (view) snapshot ``key`` of ``parent``.

        Args:
            key: The new snapshot's key.
            parent: A committed snapshot's name, or ``""`` for an empty tree.
            labels: Labels of the new snapshot.

        Returns:
            The mounts that present the snapshot read-only.

        Raises:
            AlreadyExists: ``key`` is taken by any snapshot.
            NotFound: ``parent`` does not exist.
            InvalidArgument: ``parent`` is not committed, or ``key`` is empty.
        """
        ...

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``.

        The committed snapshot keeps the active's parent and its contents;
        ``key`` no longer exists afterwards. Its labels are ``labels``, not the
        active's. Its usage is measured now and recorded.

        Raises:
            NotFound: ``key`` does not exist.
            FailedPrecondition: ``key`` is a view or committed snapshot.
            AlreadyExists: ``name`` is taken by any snapshot.
        """
        ...

    async def remove(self, key: str) -> None:
        """Remove the snapshot ``key`` (any kind) and, eventually, its data.

        Raises:
            NotFound: ``key`` does not exist.
            FailedPrecondition: Other snapshots have ``key`` as their parent.
        """
        ...

    async def walk(self, *filters: str) -> list[Info]:
        """Return the info of every snapshot matching ``filters``.

        Filters use the syntax of :mod:`runtime.core.filters` over the fields
        ``kind``, ``name``, ``parent`` and ``labels."<key>"``; several strings
        are OR-ed, none matches everything. Example:
        ``walk('kind==committed,labels."containerd.io/snapshot.ref"')``.

        Raises:
            InvalidArgument: A filter is malformed.
        """
        ...

    async def cleanup(self) -> None:
        """Delete on-disk data that no snapshot references any more.

        Safe to call at any time: it reclaims directories left by a crash or by
        asynchronous removal, and never touches a live snapshot.
        """
        ...

    async def close(self) -> None:
        """Release resources (database handles). Calling it twice is harmless."""
        ...


@runtime_checkable
class LocalSnapshotter(Protocol):
    """The optional ability of a backend to name the directory it keeps snapshots under.

    Backends on local disk have one; a proxy to another process does not. The
    namespaced snapshotter asks once, when it wraps the backend.
    """

    @property
    def root(self) -> Path:
        """The backend's directory."""
        ...


class NamespacedSnapshots(Protocol):
    """One snapshotter seen through namespaces: what ``service.snapshots`` hands out.

    The same operations as :class:`Snapshotter`, each taking the namespace first;
    ``prepare``, ``view`` and ``commit`` also take the lease the new snapshot joins.
    Keys are the namespace's own; the backend keys behind them never leave the service.
    """

    @property
    def name(self) -> str:
        """The snapshotter's name (``overlayfs``, ``native``...), as records name it."""
        ...

    @property
    def backend(self) -> Snapshotter:
        """The backend, keyed by backend keys (the garbage collector's disk phase uses it)."""
        ...

    @property
    def root(self) -> str:
        """The backend's directory; ``""`` when it has none (a proxy)."""
        ...

    def in_flight(self, backend_key: str) -> bool:
        """Whether ``backend_key`` is being made and not yet recorded (never remove it)."""
        ...

    async def stat(self, ns: str, key: str) -> Info:
        """The namespace's view of ``key``; NotFound if it has none."""
        ...

    async def update(self, ns: str, key: str, labels: Mapping[str, str]) -> Info:
        """Set labels (an empty value removes one)."""
        ...

    async def usage(self, ns: str, key: str) -> Usage:
        """Bytes and inodes of ``key`` itself."""
        ...

    async def mounts(self, ns: str, key: str) -> list[Mount]:
        """Mounts of an active snapshot or view."""
        ...

    async def walk(self, ns: str, *filters: str) -> list[Info]:
        """Snapshots of the namespace matching any filter."""
        ...

    async def prepare(
        self,
        ns: str,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """An active snapshot ``key`` on ``parent``; AlreadyExists also when adopted."""
        ...

    async def view(
        self,
        ns: str,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """A read-only view ``key`` of ``parent``."""
        ...

    async def commit(
        self,
        ns: str,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        """Commit the active snapshot ``key`` as ``name``."""
        ...

    async def remove(self, ns: str, key: str) -> None:
        """Remove the namespace's snapshot ``key``."""
        ...


class Snapshots(SnapshotCounts, Protocol):
    """What ``service.snapshots`` provides: the namespaced snapshotters by name, and counts."""

    @property
    def snapshotters(self) -> Mapping[str, NamespacedSnapshots]:
        """Every running snapshotter, by name."""
        ...

    def get(self, name: str | None = None) -> NamespacedSnapshots:
        """The snapshotter ``name`` (default: the service's); NotFound if it is not running."""
        ...
