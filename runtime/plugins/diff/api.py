"""The diff contract: apply a layer blob onto a snapshot's mounts, stage one, or compare two.

Every differ is an :class:`Applier`. A differ that can also apply a layer into
a scratch directory before its snapshot exists, and move it into the snapshot
later, is a :class:`Stager` too; the unpacker asks once, when it is built, and
applies layers side by side only then. A :class:`Comparer` writes the layer
between two snapshots' mounts (``moorage commit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import msgspec

from runtime.api.mounts import Mount
from runtime.pkg.registry.types import Descriptor

__all__ = [
    "Applier",
    "ApplyResult",
    "Comparer",
    "LayerDiff",
    "StagedLayer",
    "Stager",
    "StagingApplier",
]


class ApplyResult(msgspec.Struct, frozen=True):
    """What applying a layer produced: the descriptor of its uncompressed tar."""

    diff_id: str
    """``sha256:<hex>`` of the whole uncompressed tar stream (the OCI diffID)."""
    size: int
    """Length in bytes of the uncompressed tar stream."""


class StagedLayer(Protocol):
    """A layer applied into a scratch directory, waiting for its snapshot."""

    @property
    def result(self) -> ApplyResult:
        """The diffID and size of the uncompressed layer."""
        ...


class Applier(Protocol):
    """What a ``diff.*`` plugin provides: apply a layer onto mounts."""

    async def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], reader: Callable[[], BinaryIO]
    ) -> ApplyResult:
        """Apply the layer ``desc`` onto ``mounts``; ``reader()`` runs in a worker thread."""
        ...


@runtime_checkable
class Stager(Protocol):
    """The optional ability to apply a layer before its snapshot exists."""

    async def stage(
        self, desc: Descriptor, reader: Callable[[], BinaryIO], scratch: Path
    ) -> StagedLayer:
        """Apply the layer into a new directory under ``scratch``."""
        ...

    async def graft(self, staged: StagedLayer, mounts: Sequence[Mount]) -> bool:
        """Move a staged layer into the snapshot of ``mounts``; ``False``: apply instead."""
        ...

    async def discard(self, staged: StagedLayer) -> None:
        """Remove a staged layer that will not be grafted."""
        ...


class LayerDiff(msgspec.Struct, frozen=True):
    """The layer blob a :class:`Comparer` wrote."""

    diff_id: str
    """``sha256:<hex>`` of the uncompressed tar (the OCI diffID)."""
    digest: str
    """``sha256:<hex>`` of the blob as written (its content address)."""
    size: int
    """Length of the blob in bytes."""
    media_type: str
    """The OCI layer media type matching its compression."""


@runtime_checkable
class Comparer(Protocol):
    """The ability to write the layer that turns one snapshot's files into another's."""

    async def compare(self, lower: Sequence[Mount], upper: Sequence[Mount], out: BinaryIO,
                      *, compression: str = "gzip") -> LayerDiff:
        """Write the changes from ``lower`` (no mounts: empty) to ``upper`` as a layer to ``out``.

        ``upper`` should be quiesced (its container paused or stopped).
        """
        ...


class StagingApplier(Applier, Stager, Protocol):
    """A differ with both abilities (``diff.walking``): what its registration promises."""
