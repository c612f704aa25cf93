"""The images plugin's contract: records, labels, options and progress messages.

This is the module other plugins import from the images package. The service
behind it (``images.store``) keeps image records in the metadata database and
moves their content between registries, the content store, archives and
snapshotters.

Labels are containerd's, byte for byte, so that a garbage collector written
against containerd's rules finds the same references:

* ``containerd.io/gc.ref.content.m.<i>`` on an index for its i-th kept manifest;
  ``.config`` and ``.l.<i>`` on a manifest for its config and layers;
* ``containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>`` on a config
  blob once the image is unpacked there;
* ``containerd.io/uncompressed=<diffID>`` on a layer blob once applied;
* ``containerd.io/distribution.source.<registry>=<repo>[,<repo>...]`` on every
  fetched blob (what cross-repository mounts on push are built from).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from runtime.pkg.registry.types import Descriptor

if TYPE_CHECKING:
    from runtime.plugins.images.manifests import ConfigFile, Manifest
    from runtime.plugins.snapshots.api import NamespacedSnapshots

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "LABEL_DISTRIBUTION_SOURCE",
    "LABEL_FETCHED_FROM",
    "LABEL_GC_REF_CONTENT",
    "LABEL_GC_REF_SNAPSHOT",
    "LABEL_SNAPSHOTTER",
    "LABEL_UNCOMPRESSED",
    "BlobProgress",
    "BlobStatus",
    "CheckResult",
    "Done",
    "Failed",
    "Image",
    "ImageConfig",
    "ImageCreate",
    "ImageDelete",
    "ImageUpdate",
    "ImageUsage",
    "Images",
    "Progress",
    "ProgressEvent",
    "PullOptions",
    "PushOptions",
    "Resolved",
    "UnpackStatus",
]

LABEL_GC_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
#: Image label: the image is unpacked in snapshotter ``<name>`` with this top chainID.
LABEL_SNAPSHOTTER = "moorage/snapshotter."
#: Content label: the registry host (mirror or upstream) that served the blob last.
LABEL_FETCHED_FROM = "moorage/fetched.from"

#: Index annotation carrying the full image name (containerd's archives).
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
#: OCI index annotation carrying the reference name (a tag, per the spec).
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


class Image(msgspec.Struct, kw_only=True):
    """An image record: a name pointing at a manifest or index in the content store.

    Attributes:
        name: The full normalised reference (``docker.io/library/busybox:latest``).
        target: Descriptor of the root manifest or index.
        labels: Free-form labels; ``moorage/snapshotter.<sn>`` marks an unpacked image.
        created_at: When the record was created.
        updated_at: When the target or labels last changed.
    """

    name: str
    target: Descriptor
    labels: dict[str, str] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ImageCreate(msgspec.Struct, kw_only=True):
    """Event ``/images/create``."""

    name: str
    labels: dict[str, str] = {}


class ImageUpdate(msgspec.Struct, kw_only=True):
    """Event ``/images/update``."""

    name: str
    labels: dict[str, str] = {}


class ImageDelete(msgspec.Struct, kw_only=True):
    """Event ``/images/delete``."""

    name: str


class ImageConfig(msgspec.Struct, kw_only=True, rename="pascal", omit_defaults=True):
    """The ``config`` section of an OCI image config: how to run the image.

    Field names on the wire are the OCI ones (``Entrypoint``, ``WorkingDir``...).
    Docker writes ``null`` for unset fields, hence the optional types.
    """

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] | None = None
    working_dir: str | None = None
    user: str | None = None
    labels: dict[str, str] | None = None
    stop_signal: str | None = None
    exposed_ports: dict[str, Any] | None = None
    volumes: dict[str, Any] | None = None


class PullOptions(msgspec.Struct, kw_only=True):
    """How to pull.

    Attributes:
        platforms: ``os/arch[/variant]`` to fetch; empty means the host's.
        all_platforms: Fetch every manifest of an index (unpack only ``platforms``).
        snapshotter: Where to unpack; empty means the configured default.
        unpack: Unpack after (and while) fetching.
        plain_http: Talk HTTP, not HTTPS, to the registry.
        hosts_dir: Directory of ``<host>/hosts.toml`` files; empty: the configured one.
        username: Registry user (with ``password``); empty: Docker's config.json.
        password: Registry password or token.
        max_concurrent_downloads: Parallel blob downloads; 0: the configured value.
    """

    platforms: list[str] = []
    all_platforms: bool = False
    snapshotter: str = ""
    unpack: bool = True
    plain_http: bool = False
    hosts_dir: str = ""
    username: str = ""
    password: str = ""
    max_concurrent_downloads: int = 0


class PushOptions(msgspec.Struct, kw_only=True):
    """How to push: ``platforms`` (empty: everything present) and registry access."""

    platforms: list[str] = []
    plain_http: bool = False
    hosts_dir: str = ""
    username: str = ""
    password: str = ""


class BlobStatus(StrEnum):
    """Where a blob stands in a pull or push."""

    WAITING = "waiting"  # queued behind the download limit or another pull of it
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    DONE = "done"  # transferred by this operation
    EXISTS = "exists"  # already there (locally for pull, remotely for push)
    MOUNTED = "mounted"  # push: cross-repository mount
    FAILED = "failed"


class UnpackStatus(StrEnum):
    """Where a layer stands in the unpack."""

    NONE = ""
    WAITING = "waiting"
    APPLYING = "applying"
    APPLIED = "applied"
    EXISTS = "exists"  # the snapshot was already there


class Resolved(msgspec.Struct, tag="resolved", kw_only=True):
    """The reference resolved to a root descriptor."""

    name: str
    digest: str
    media_type: str
    size: int
    host: str = ""


class BlobProgress(msgspec.Struct, tag="blob", kw_only=True, omit_defaults=True):
    """The state of one blob of a pull or push.

    Attributes:
        digest: The blob.
        kind: ``index``, ``manifest``, ``config`` or ``layer``.
        media_type: The blob's media type.
        status: The transfer status.
        offset: Bytes transferred so far (resumed bytes included).
        total: The blob's size.
        resumed: Bytes that were already in an interrupted ingest.
        host: The registry host that served or took the blob.
        unpack: The unpack status (layers of an unpacked manifest).
        chain_id: The layer's chain ID once known.
        seconds: Transfer time; for ``applied`` layers, the apply time.
    """

    digest: str
    kind: str
    media_type: str = ""
    status: BlobStatus = BlobStatus.WAITING
    offset: int = 0
    total: int = 0
    resumed: int = 0
    host: str = ""
    unpack: UnpackStatus = UnpackStatus.NONE
    chain_id: str = ""
    seconds: float = 0.0


class Done(msgspec.Struct, tag="done", kw_only=True, omit_defaults=True):
    """The operation finished: the image, how long it took and where the time went."""

    image: Image | None = None
    seconds: float = 0.0
    bytes: int = 0
    timings: dict[str, float] = {}


class Failed(msgspec.Struct, tag="error", kw_only=True):
    """The operation failed; ``code`` and ``message`` as in every API error."""

    code: str
    message: str


#: One progress message of a pull or push (NDJSON line on the API).
Progress = Resolved | BlobProgress | Done | Failed


class ProgressEvent(msgspec.Struct, kw_only=True):
    """Events ``/images/pull/progress`` and ``/images/push/progress``: a blob changed status.

    Only status changes are published (not every byte count), so a subscriber
    sees a few events per blob.
    """

    name: str
    blob: BlobProgress


class CheckResult(msgspec.Struct, kw_only=True):
    """``images check``: is every blob of the image (for the platforms asked) present?"""

    name: str
    complete: bool
    present: int
    total: int
    missing: list[str] = []
    size: int = 0
    unpacked: dict[str, str] = {}


class ImageUsage(msgspec.Struct, kw_only=True):
    """Disk use of an image: its blobs and, when unpacked, its snapshots."""

    name: str
    content_size: int
    blobs: int
    snapshotter: str = ""
    snapshot_size: int = 0
    snapshots: int = 0


class Images(Protocol):
    """What ``images.store`` provides to other plugins (the CRI image and pod services)."""

    async def list(self, namespace: str, filters: Sequence[str] = ()) -> builtins.list[Image]:
        """Images of the namespace matching any filter."""
        ...

    async def get(self, namespace: str, name: str) -> Image:
        """One image, or NotFound."""
        ...

    async def delete(
        self, namespace: str, name: str, *, sync: bool = False, target: str = ""
    ) -> None:
        """Delete an image record (``target``: only if it still points there)."""
        ...

    async def pull(
        self, namespace: str, reference: str, opts: PullOptions | None = None
    ) -> Image:
        """Pull (and unpack, unless ``opts`` say not to) an image."""
        ...

    def snapshotter(self, name: str = "") -> NamespacedSnapshots:
        """The namespaced snapshotter images unpack into (default: the configured one)."""
        ...

    async def image_rootfs(
        self, namespace: str, name: str, snapshotter: str = "", *, platform: str = ""
    ) -> tuple[str, ImageConfig]:
        """The image's top chain ID in ``snapshotter`` (unpacked if need be) and its config."""
        ...

    async def platform_manifest(
        self, namespace: str, image: Image, platform: str = ""
    ) -> tuple[Descriptor, Manifest, ConfigFile]:
        """The image's manifest for ``platform`` (default: the host's) and its config."""
        ...
