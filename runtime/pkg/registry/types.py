"""Wire records of the distribution API: descriptors, platforms and media types.

Field names follow the OCI JSON (``mediaType``, ``os.version``) so a
:class:`Descriptor` decodes straight out of a manifest or index with
``msgspec.json.decode(data, type=Descriptor)`` and encodes back unchanged.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ACCEPT_MANIFESTS",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "MEDIA_TYPE_DOCKER_CONFIG",
    "MEDIA_TYPE_DOCKER_FOREIGN_LAYER",
    "MEDIA_TYPE_DOCKER_LAYER",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MEDIA_TYPE_DOCKER_SCHEMA1",
    "MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED",
    "MEDIA_TYPE_OCI_CONFIG",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_LAYER",
    "MEDIA_TYPE_OCI_LAYER_GZIP",
    "MEDIA_TYPE_OCI_LAYER_ZSTD",
    "MEDIA_TYPE_OCI_MANIFEST",
    "SCHEMA1_MEDIA_TYPES",
    "Descriptor",
    "Platform",
]

MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Schema 1 is only named so it can be refused with a useful message: containerd
# dropped it in 2.1 and registries stopped serving it by default long before.
MEDIA_TYPE_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

#: Media types of documents that list other manifests.
INDEX_MEDIA_TYPES: frozenset[str] = frozenset(
    {MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST}
)
#: Media types of single-platform image manifests.
MANIFEST_MEDIA_TYPES: frozenset[str] = frozenset(
    {MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST}
)
#: Media types refused as "schema 1".
SCHEMA1_MEDIA_TYPES: frozenset[str] = frozenset(
    {MEDIA_TYPE_DOCKER_SCHEMA1, MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED}
)

#: ``Accept`` header of manifest requests. The trailing ``*/*`` is what containerd
#: sends too: a registry holding only a schema 1 manifest then says so (and we
#: refuse it by name) instead of answering a bare 404.
ACCEPT_MANIFESTS = ", ".join(
    [
        MEDIA_TYPE_OCI_INDEX,
        MEDIA_TYPE_OCI_MANIFEST,
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        MEDIA_TYPE_DOCKER_MANIFEST,
        "*/*",
    ]
)

#: Indexes and manifests larger than this (4 MiB, containerd's limit) are refused:
#: they are held in memory whole, and a registry should never need more.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


class Platform(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The platform an index entry is built for (OCI ``platform`` object).

    Attributes:
        architecture: GOARCH-style CPU architecture (``amd64``, ``arm64``).
        os: GOOS-style operating system (``linux``).
        variant: CPU variant (``v7`` for ``arm``), empty when not given.
        os_version: ``os.version`` on the wire; used by Windows images.
    """

    architecture: str
    os: str
    variant: str = ""
    os_version: str = msgspec.field(default="", name="os.version")


class Descriptor(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An OCI content descriptor: what a blob is, its digest and its size.

    Attributes:
        mediaType: The media type of the referenced content.
        digest: ``sha256:<hex>`` of the content.
        size: Exact length of the content in bytes.
        annotations: Free-form metadata from the manifest.
        platform: Set on index entries only.
        urls: Alternative download locations (foreign layers); not used for fetching.
    """

    mediaType: str  # the OCI field name, kept so the JSON round-trips unchanged
    digest: str
    size: int
    annotations: dict[str, str] = {}
    platform: Platform | None = None
    urls: list[str] = []
