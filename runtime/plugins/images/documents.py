"""Refuse ambiguous image documents (the OCI image-spec advisory of 2021, GHSA-77vh-xpmg-72qh).

A document that could be read both as an index and as a manifest lets two clients
see two different images behind one digest: one follows ``manifests``, the other
``config`` and ``layers``. So, as containerd does since then, a document is refused
when

* it carries both ``manifests`` and ``config``/``layers``;
* its own ``mediaType`` names one kind (index or manifest) while its content is the
  other;
* the descriptor that led to it (a registry's ``Content-Type``, an index entry, an
  image record, an archive's ``index.json``) names a kind that the document is not.

Pull, import and push call :func:`check_document` before they act on a document.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.core.errors import InvalidArgument
from runtime.pkg.registry.types import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
)

__all__ = ["check_document"]


def _kind(media_type: str) -> str:
    if media_type in INDEX_MEDIA_TYPES:
        return "index"
    if media_type in MANIFEST_MEDIA_TYPES:
        return "manifest"
    return ""


def _article(kind: str) -> str:
    return f"an {kind}" if kind == "index" else f"a {kind}"


def check_document(desc: Descriptor, data: bytes, *, name: str = "") -> None:
    """Refuse ``data`` if it is ambiguous or not the kind of document ``desc`` says.

    Documents of other media types (configs, layers, unknown ones) are not looked at;
    malformed JSON is left to the decoders, which refuse it.

    Args:
        desc: The descriptor that led to the document.
        data: Its bytes.
        name: What to call it in errors (default: its digest).

    Raises:
        InvalidArgument: Naming the document's digest (or ``name``) and what disagrees.
    """
    expected = _kind(desc.mediaType)
    if not expected:
        return
    try:
        doc: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return
    if not isinstance(doc, dict):
        return
    what = name or desc.digest
    holds_index = "manifests" in doc
    holds_image = "config" in doc or "layers" in doc
    if holds_index and holds_image:
        raise InvalidArgument(
            f"ambiguous document {what}: it carries both 'manifests' and 'config'/'layers', "
            "so it reads as an index and as a manifest; refused"
        )
    content = "index" if holds_index else "manifest" if holds_image else ""
    declared = doc.get("mediaType")
    declared_kind = _kind(declared) if isinstance(declared, str) else ""
    if declared_kind and content and declared_kind != content:
        raise InvalidArgument(
            f"ambiguous document {what}: its mediaType says {declared} but it holds "
            f"{_article(content)}; refused"
        )
    actual = declared_kind or content
    if actual and actual != expected:
        raise InvalidArgument(
            f"document {what} was described as {desc.mediaType} but is "
            f"{_article(actual)}" + (f" ({declared})" if declared_kind else "") + "; refused"
        )
