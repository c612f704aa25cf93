"""Wire types of the admin API: request and response bodies shared with the client.

A record a plugin owns travels as the plugin defines it: its one definition is
in the plugin's ``api.py`` and this module re-exports it (``ContentInfo``,
``Namespace``, ``Lease``, ``Mount``, ``Usage``, ``CheckResult``, ``ImageUsage``,
``Resolved``, ``Failed``), so that route sets and the client import every wire
type from here. What is defined here is the API's own: request bodies, and
answers whose wire form deliberately differs from the record (looser, or
without the record's enums).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from runtime.api.constants import API_VERSION, DEFAULT_NAMESPACE, LEASE_HEADER, NAMESPACE_HEADER
from runtime.api.mounts import Mount
from runtime.plugins.content.api import ContentInfo
from runtime.plugins.images.api import CheckResult, Failed, ImageUsage, Resolved
from runtime.plugins.metadata.api import Lease, Namespace
from runtime.plugins.snapshots.api import Usage

__all__ = [
    "DEFAULT_NAMESPACE",
    "LEASE_HEADER",
    "NAMESPACE_HEADER",
    "Body",
    "CheckResult",
    "CommitRequest",
    "ContentInfo",
    "ErrorBody",
    "ErrorDetail",
    "EventEnvelope",
    "Failed",
    "Health",
    "ImageCreateRequest",
    "ImageDescriptor",
    "ImageInfo",
    "ImageProgress",
    "ImagePullRequest",
    "ImagePushRequest",
    "ImageRootfs",
    "ImageUpdateRequest",
    "ImageUsage",
    "IngestStatus",
    "LabelsRequest",
    "Lease",
    "LeaseCreateRequest",
    "LeaseResource",
    "Mount",
    "Namespace",
    "NamespaceCreateRequest",
    "NamespaceLabelsRequest",
    "PluginInfo",
    "ProgressBlob",
    "ProgressDone",
    "Resolved",
    "SnapshotCommitRequest",
    "SnapshotCreateRequest",
    "SnapshotInfo",
    "Usage",
    "Version",
]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are refused, not ignored."""


class ErrorDetail(msgspec.Struct, kw_only=True):
    """The inner error object."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response: ``{"error": {"code": "not_found", "message": "..."}}``."""

    error: ErrorDetail


class Version(msgspec.Struct, kw_only=True):
    """``GET /v1/version``."""

    version: str
    revision: str = ""
    api_version: int = API_VERSION
    pid: int = 0


class Health(msgspec.Struct, kw_only=True):
    """``GET /v1/healthz``."""

    status: str = "ok"


class PluginInfo(msgspec.Struct, kw_only=True):
    """One plugin in ``GET /v1/plugins``."""

    type: str
    id: str
    requires: list[str] = []
    status: str = ""
    reason: str = ""
    distribution: str = ""
    version: str = ""
    api_version: int = 1
    description: str = ""
    init_seconds: float = 0.0


class EventEnvelope(msgspec.Struct, kw_only=True):
    """One line of the ``GET /v1/events`` NDJSON stream."""

    timestamp: datetime
    namespace: str
    topic: str
    type: str
    event: Any



class NamespaceCreateRequest(Body):
    """``POST /v1/namespaces``."""

    name: str
    labels: dict[str, str] = {}


class NamespaceLabelsRequest(Body):
    """``PATCH /v1/namespaces/{name}``: labels to set; an empty value removes one."""

    labels: dict[str, str]



class LabelsRequest(Body):
    """``PATCH`` of labels: values to set; an empty value removes that label."""

    labels: dict[str, str]



class IngestStatus(msgspec.Struct, kw_only=True):
    """The state of an upload in progress."""

    ref: str
    offset: int
    total: int | None = None
    expected: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None


class CommitRequest(Body):
    """``POST /v1/content/ingests/{ref}``: verify and publish the upload."""

    size: int | None = None
    expected: str | None = None
    labels: dict[str, str] = {}



class LeaseCreateRequest(Body):
    """``POST /v1/leases``: ``id`` empty to generate one; ``expire`` in seconds."""

    id: str = ""
    labels: dict[str, str] = {}
    expire: float | None = None


class LeaseResource(Body):
    """A resource held by a lease (``content``, ``ingests``, ``images``, ``snapshots/<sn>``)."""

    type: str
    id: str



class SnapshotInfo(msgspec.Struct, kw_only=True):
    """A snapshot as the namespace sees it."""

    kind: str
    name: str
    parent: str = ""
    labels: dict[str, str] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None



class SnapshotCreateRequest(Body):
    """``POST /v1/snapshots/{sn}``: prepare (active) or view."""

    key: str
    parent: str = ""
    kind: str = "active"
    labels: dict[str, str] = {}


class SnapshotCommitRequest(Body):
    """``POST /v1/snapshots/{sn}/{key}/commit``."""

    name: str
    labels: dict[str, str] = {}


# -- images -------------------------------------------------------------------------------


class ImageDescriptor(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An OCI descriptor, with the OCI field names (``mediaType``)."""

    mediaType: str
    digest: str
    size: int
    annotations: dict[str, str] = {}
    platform: dict[str, str] | None = None


class ImageInfo(msgspec.Struct, kw_only=True):
    """An image: a full reference naming a manifest or index."""

    name: str
    target: ImageDescriptor
    labels: dict[str, str] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ImageCreateRequest(Body):
    """``POST /v1/images``: record an image over content already stored."""

    name: str
    target: ImageDescriptor
    labels: dict[str, str] = {}


class ImageUpdateRequest(Body):
    """``PATCH /v1/images/{name}``.

    Without ``fieldpaths``: each given label is set (an empty value removes
    it) and a given ``target`` replaces the old one. With ``fieldpaths``,
    containerd's rules: ``labels``, ``labels.KEY``, ``annotations[.KEY]``, ``target``.
    """

    labels: dict[str, str] = {}
    target: ImageDescriptor | None = None
    fieldpaths: list[str] = []


class ImagePullRequest(Body):
    """``POST /v1/images/pull``; the answer is NDJSON progress (:data:`ImageProgress`)."""

    ref: str
    platforms: list[str] = []
    all_platforms: bool = False
    snapshotter: str = ""
    unpack: bool = True
    plain_http: bool = False
    hosts_dir: str = ""
    user: str = ""
    password: str = ""
    max_concurrent_downloads: int = 0


class ImagePushRequest(Body):
    """``POST /v1/images/push``: push image ``name`` to ``ref`` (default: ``name``)."""

    name: str
    ref: str = ""
    platforms: list[str] = []
    plain_http: bool = False
    hosts_dir: str = ""
    user: str = ""
    password: str = ""


# Not the plugin's BlobProgress and Done: the client decodes statuses as plain
# strings (a newer daemon may send one it does not know) and the image as the
# wire's ImageInfo. Resolved and Failed are the plugin's own.
class ProgressBlob(msgspec.Struct, tag="blob", kw_only=True):
    """Progress line: the state of one blob (``status``) and of its unpack (``unpack``)."""

    digest: str
    kind: str
    media_type: str = ""
    status: str = "waiting"
    offset: int = 0
    total: int = 0
    resumed: int = 0
    host: str = ""
    unpack: str = ""
    chain_id: str = ""
    seconds: float = 0.0


class ProgressDone(msgspec.Struct, tag="done", kw_only=True):
    """Last progress line of a success: the image, the duration and where it went."""

    image: ImageInfo | None = None
    seconds: float = 0.0
    bytes: int = 0
    timings: dict[str, float] = {}



#: One NDJSON line of a pull or push.
ImageProgress = Resolved | ProgressBlob | ProgressDone | Failed


class ImageRootfs(msgspec.Struct, kw_only=True):
    """``GET /v1/images/{name}/rootfs``: the top chain ID to prepare a container on."""

    name: str
    snapshotter: str
    chain_id: str
    config: dict[str, Any] = {}
