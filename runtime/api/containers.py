"""Container wire types: the record, its request bodies and its events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from runtime.api.mounts import Mount
from runtime.api.specs import ImageConfig, SpecOptions

__all__ = [
    "LAYER_DIFF_ID_HEADER",
    "LAYER_DIGEST_HEADER",
    "LAYER_MEDIA_TYPE_HEADER",
    "ArchiveResult",
    "Container",
    "ContainerCreate",
    "ContainerCreateRequest",
    "ContainerDelete",
    "ContainerUpdate",
    "ContainerUpdateRequest",
    "PathStatInfo",
    "RunRequest",
    "RuntimeInfo",
]

#: Headers of ``GET /v1/containers/{id}/changes``: the layer blob's digest, diffID, media type.
LAYER_DIGEST_HEADER = "Moorage-Layer-Digest"
LAYER_DIFF_ID_HEADER = "Moorage-Layer-Diff-Id"
LAYER_MEDIA_TYPE_HEADER = "Moorage-Layer-Media-Type"


class RuntimeInfo(msgspec.Struct, kw_only=True):
    """Which runtime runs the container's task, and how.

    Attributes:
        name: A runtime plugin (``runc``, ``crun``, ``runtime.runc``) or
            containerd's ``io.containerd.runc.v2``.
        options: Runtime-specific options, kept as given.
    """

    name: str = "runc"
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class Container(msgspec.Struct, kw_only=True):
    """A container record, as containerd defines it.

    Attributes:
        id: Unique within the namespace (identifier rules).
        image: The image reference it was made from (free text, may be empty).
        runtime: The runtime that runs its task.
        spec: The OCI runtime spec (``config.json``) as a JSON object.
        snapshotter: The snapshotter holding its root filesystem, or ``""``.
        snapshot_key: The active snapshot's key, or ``""``.
        labels: Free-form labels.
        extensions: Free-form typed data other components attach.
        created_at: Creation time (UTC).
        updated_at: Last update time (UTC).
    """

    id: str
    image: str = ""
    runtime: RuntimeInfo = msgspec.field(default_factory=RuntimeInfo)
    spec: dict[str, Any] = msgspec.field(default_factory=dict)
    snapshotter: str = ""
    snapshot_key: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ContainerCreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/containers``.

    Give ``spec`` to store it as is; otherwise the daemon generates one from
    its defaults, ``image_config`` (the image's ``config`` object) and
    ``spec_options``. A spec asking for host namespaces or privileges beyond
    the defaults is refused (403) unless ``allow_privileged`` is true.
    """

    id: str
    image: str = ""
    runtime: RuntimeInfo = msgspec.field(default_factory=RuntimeInfo)
    spec: dict[str, Any] | None = None
    spec_options: SpecOptions | None = None
    image_config: ImageConfig | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)
    allow_privileged: bool = False


class RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/run``: a container, its root filesystem and its task in one call.

    ``moorage run`` would otherwise need a lease, a snapshot, a container and a
    task request (and the lease's removal): each is a round trip, and a burst
    of containers pays them all. The container record is written before its
    snapshot is prepared, so the record protects the snapshot from the garbage
    collector without a lease.

    Attributes:
        container: As for ``POST /v1/containers``; ``snapshotter`` and
            ``snapshot_key`` name the active snapshot to prepare.
        parent: The snapshot's parent (the image's top chain ID from
            ``GET /v1/images/{name}/rootfs``); empty prepares no snapshot.
        rootfs: The root filesystem's mounts when there is no snapshot.
        stdin: Keep the init process's stdin open for attaching.
        start: Start the task as well (``run -d``); otherwise attach with
            ``start=1`` so that no output is lost.
        image_rootfs: The daemon finds the root filesystem of ``container.image``
            itself, as ``GET /v1/images/{name}/rootfs`` would (in
            ``container.snapshotter``, default the images' one; unpacked if
            need be), and fills in ``parent``, the container's
            ``image_config``, ``snapshotter`` and ``snapshot_key`` (its id):
            ``moorage run`` is then one request (NotFound when the image is
            missing, so the client can pull and ask again).
    """

    container: ContainerCreateRequest
    parent: str = ""
    rootfs: list[Mount] = msgspec.field(default_factory=list)
    stdin: bool = False
    start: bool = False
    image_rootfs: bool = False


class ContainerUpdateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /v1/containers/{id}``: fields left out (``null``) stay as they are.

    ``labels`` and ``extensions`` merge into the current ones; an empty label
    value (or a ``null`` extension) removes that entry. A new ``spec`` is held
    to the same rule as at create: privileged only with ``allow_privileged``.
    """

    labels: dict[str, str] | None = None
    spec: dict[str, Any] | None = None
    image: str | None = None
    snapshot_key: str | None = None
    extensions: dict[str, Any] | None = None
    allow_privileged: bool = False


class ContainerCreate(msgspec.Struct, kw_only=True):
    """Event ``/containers/create``."""

    id: str
    image: str = ""
    runtime: RuntimeInfo = msgspec.field(default_factory=RuntimeInfo)


class ContainerUpdate(msgspec.Struct, kw_only=True):
    """Event ``/containers/update``."""

    id: str
    image: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    snapshot_key: str = ""


class ContainerDelete(msgspec.Struct, kw_only=True):
    """Event ``/containers/delete``."""

    id: str


class PathStatInfo(msgspec.Struct, kw_only=True):
    """A path inside a container's root (``GET /v1/containers/{id}/archive/stat``).

    Attributes:
        name: Its base name.
        mode: ``st_mode`` (type and permission bits).
        size: ``st_size``.
        mtime: Modification time, seconds since the epoch.
        link_target: A symlink's target as written (empty otherwise).
        is_dir: Whether it is a directory.
    """

    name: str
    mode: int
    size: int
    mtime: float
    link_target: str = ""
    is_dir: bool = False


class ArchiveResult(msgspec.Struct, kw_only=True):
    """What ``PUT /v1/containers/{id}/archive`` unpacked: the number of entries made."""

    entries: int
