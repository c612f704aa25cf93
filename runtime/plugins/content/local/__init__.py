"""The local content backend: blobs and ingests as plain files under one root.

See :mod:`runtime.plugins.content.local.store` for the disk layout and the
crash-safety argument. This layer knows bytes, digests and ingests only: no
namespaces, no labels.
"""

from __future__ import annotations

from runtime.plugins.content.local.store import ContentStore
from runtime.plugins.content.local.writer import Writer

__all__ = ["ContentStore", "Writer"]
