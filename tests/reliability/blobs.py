"""Images and layer blobs built in memory, for the fake registry and hostile-input tests.

:class:`MemoryImage` holds every blob of one image (layers, config, manifest and maybe
an index) keyed by digest, ready to be served by :class:`~.fake_registry.FakeRegistry`.
:func:`raw_layer` builds a layer from raw tar members, so that a test can write what
:class:`~tests.fixtures.images.LayerBuilder` refuses to: ``..`` and absolute names,
device nodes, links out of the tree, whiteouts of ``..``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.fixtures.images import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Layer,
    LayerBuilder,
    host_platform,
)

__all__ = [
    "Member",
    "MemoryImage",
    "canonical",
    "gzip_bytes",
    "memory_image",
    "raw_layer",
    "sha256",
]


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canonical(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces): the same document always has one digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def gzip_bytes(data: bytes) -> bytes:
    """Gzip with a fixed header (no name, mtime 0), so equal inputs give equal blobs."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=1) as gz:
        gz.write(data)
    return out.getvalue()


@dataclass
class MemoryImage:
    """Every blob of one image, by digest.

    Attributes:
        root: The descriptor a tag resolves to (manifest or index).
        blobs: ``digest -> bytes`` for every blob, documents included.
        media_types: ``digest -> media type`` of the documents (manifests, indexes).
        layers: The layer descriptors, bottom first.
    """

    root: Descriptor
    blobs: dict[str, bytes] = field(default_factory=dict)
    media_types: dict[str, str] = field(default_factory=dict)
    layers: list[Descriptor] = field(default_factory=list)

    def add(self, data: bytes, media_type: str = "") -> Descriptor:
        """Store ``data``; documents keep their media type for the manifest endpoint."""
        desc = Descriptor(media_type, sha256(data), len(data))
        self.blobs[desc.digest] = data
        if media_type:
            self.media_types[desc.digest] = media_type
        return desc


def memory_image(
    layers: Sequence[LayerBuilder | Layer],
    *,
    cmd: Sequence[str] = ("sh",),
    index: bool = False,
    diff_ids: Sequence[str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> MemoryImage:
    """Build an image (gzip layers, config, manifest; with ``index``, a one-entry index).

    Args:
        layers: Bottom first; builders are built with gzip.
        cmd: The config's ``Cmd``.
        index: Wrap the manifest in an image index (with the host's platform).
        diff_ids: Replace the config's diff IDs (to lie about the layers).
        extra_config: Merged into the config's ``config`` object.
    """
    built = [lyr.build("gzip") if isinstance(lyr, LayerBuilder) else lyr for lyr in layers]
    os_, arch = host_platform()
    config = {
        "architecture": arch,
        "os": os_,
        "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"], **(extra_config or {})},
        "rootfs": {
            "type": "layers",
            "diff_ids": list(diff_ids) if diff_ids is not None else [b.diff_id for b in built],
        },
    }
    image = MemoryImage(root=Descriptor("", "", 0))
    for layer in built:
        image.blobs[layer.descriptor.digest] = layer.data
        image.layers.append(layer.descriptor)
    config_desc = image.add(canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_desc.digest,
                   "size": config_desc.size},
        "layers": [d.to_json() for d in image.layers],
    }
    image.root = image.add(canonical(manifest), MEDIA_TYPE_MANIFEST)
    if index:
        entry = {**image.root.to_json(), "platform": {"os": os_, "architecture": arch}}
        doc = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [entry]}
        image.root = image.add(canonical(doc), MEDIA_TYPE_INDEX)
    return image


@dataclass(frozen=True)
class Member:
    """One raw tar member for :func:`raw_layer`.

    Attributes:
        name: Stored verbatim (``../x``, ``/etc/x`` allowed).
        type: A :mod:`tarfile` type (``REGTYPE``, ``SYMTYPE``, ``LNKTYPE``, ``CHRTYPE``...).
        data: Content of a regular file.
        linkname: Target of a symlink or hardlink.
        mode: Permission bits.
        devmajor: Major number of a device node.
        devminor: Minor number of a device node.
    """

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    devmajor: int = 0
    devminor: int = 0


def raw_layer(members: Iterable[Member], *, compress: bool = True) -> Layer:
    """A layer holding exactly ``members``, in order, however hostile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.linkname = m.type, m.mode, m.linkname
            info.devmajor, info.devminor, info.mtime = m.devmajor, m.devminor, 1_700_000_000
            if m.type == tarfile.DIRTYPE and m.mode == 0o644:
                info.mode = 0o755
            info.size = len(m.data) if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tar.addfile(info, io.BytesIO(m.data) if info.size else None)
    raw = buf.getvalue()
    data = gzip_bytes(raw) if compress else raw
    media = MEDIA_TYPE_LAYER_GZIP if compress else "application/vnd.oci.image.layer.v1.tar"
    return Layer(Descriptor(media, sha256(data), len(data)), sha256(raw), data)
