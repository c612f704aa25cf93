"""Unpack: apply an image's layers into committed snapshots named by chain ID.

For layer ``i`` with diffID ``d_i`` the snapshot is ``c_i`` (``c_0 = d_0``,
``c_i = sha256(c_{i-1} + " " + d_i)``), so identical layer stacks share
snapshots across images. Per layer, as containerd's unpacker does:

1. lock ``sn://<snapshotter>/<chainID>`` (concurrent pulls apply a layer once);
2. skip if the committed snapshot exists, or if a prepare labelled
   ``containerd.io/snapshot.ref=<chainID>`` answers AlreadyExists (shared from
   another namespace);
3. otherwise prepare ``extract-<nanos>-<rand> <chainID>`` on ``c_{i-1}``, apply
   the blob through the diff service, check the diffID against the config,
   commit as the chain ID, and label the blob ``containerd.io/uncompressed``.

A layer still downloading is applied while it arrives: the unpacker reads the
layer's ingest behind the download (``LayerStream``), whose end comes only once
the blob's digest has been verified, and commits the snapshot only after the
blob is stored. A download that fails fails the pull with its own error, even
if the half-read bytes already made the apply fail; the extract snapshot is
removed either way, so a bad blob leaves neither blob nor snapshot.

Layers are handled side by side, each as soon as its blob has arrived: when
the diff service can *stage* layers (apply into a scratch directory now,
graft into an overlay upperdir later, see
:mod:`runtime.plugins.diff.walking.staging`), layer ``i`` is applied while
layers below it still are, and only its graft and commit wait for ``c_{i-1}``.
This is containerd's parallel unpack, done without a snapshotter that can
rebase. A snapshotter whose mounts cannot take a graft gets the ordinary,
sequential apply. The extract key and any staged files are removed on failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar, cast

import anyio

from runtime.core.errors import AlreadyExists, FailedPrecondition, MoorageError, NotFound
from runtime.core.faults import fault_point
from runtime.core.locks import KeyedLocks
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.content.api import NamespacedContent
from runtime.plugins.diff.api import Applier, ApplyResult, StagedLayer, Stager
from runtime.plugins.images.api import LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED, UnpackStatus
from runtime.plugins.images.fetch import Keep
from runtime.plugins.images.manifests import ConfigFile, Manifest, chain_ids
from runtime.plugins.images.progress import Tracker
from runtime.plugins.snapshots.api import Kind, Mount, NamespacedSnapshots

__all__ = [
    "SNAPSHOT_REF_LABEL",
    "LayerReady",
    "LayerSource",
    "LayerStream",
    "Unpacker",
    "extract_key",
]

log = logging.getLogger("moorage.images")

SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
_PREPARE_ATTEMPTS = 3

R = TypeVar("R")

#: Waits until layer ``i``'s blob is in the content store (raises if its fetch failed).
LayerReady = Callable[[int], Awaitable[None]]


class LayerStream(Protocol):
    """The bytes of a layer blob being downloaded, readable while they arrive.

    ``read`` blocks until more bytes are there, returns ``b""`` only once the
    whole blob has been verified against its digest, and raises if it was not
    (see :class:`runtime.plugins.content.local.writer.Follower`).
    """

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the verified end."""
        ...

    def close(self) -> None:
        """Release the stream; idempotent."""
        ...

    def __enter__(self) -> LayerStream: ...

    def __exit__(self, *exc_info: object) -> None: ...


#: Waits until layer ``i`` is downloading or stored; returns a stream of it while it
#: downloads, ``None`` when there is none to follow (then wait for :data:`LayerReady`).
LayerSource = Callable[[int], Awaitable[LayerStream | None]]


async def _always_ready(_: int) -> None:
    return None


async def _no_stream(_: int) -> LayerStream | None:
    return None


def extract_key(chain_id: str) -> str:
    """A fresh key for the active snapshot a layer is applied in."""
    return f"extract-{time.time_ns()}-{secrets.token_hex(4)} {chain_id}"


class Unpacker:
    """Applies the layers of manifests into one snapshotter, for one namespace.

    Args:
        namespace: Whose snapshots and content.
        snapshotter: A namespaced snapshotter (``Snapshots.get(name)``).
        diff: The diff service: ``apply(desc, mounts, reader)``.
        stager: The diff service again when it can also stage layers (see
            :class:`~runtime.plugins.diff.api.Stager`, asked once by the image
            service), for side-by-side layers; ``None`` applies them one by one.
        content: The content service (for labels and blob readers).
        locks: Keyed locks shared by every operation of the images plugin.
        lease: Lease new snapshots join while the operation runs.
        tracker: Progress of the operation, if any.
        scratch: Where staged layers go (on the snapshotter's file system);
            ``None`` applies layers one after the other.
        parallel: Limits layers applied at the same time.
        grafts: Per snapshotter, whether grafting worked before (shared by
            unpackers, so a snapshotter that cannot take grafts is learnt once).
        keep: Adds an existing snapshot to the operation's lease (see
            :data:`~.fetch.Keep`).
    """

    def __init__(
        self,
        *,
        namespace: str,
        snapshotter: NamespacedSnapshots,
        diff: Applier,
        stager: Stager | None = None,
        content: NamespacedContent,
        locks: KeyedLocks,
        lease: str | None = None,
        tracker: Tracker | None = None,
        scratch: Path | None = None,
        parallel: anyio.Semaphore | None = None,
        grafts: dict[str, bool] | None = None,
        keep: Keep | None = None,
    ) -> None:
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.diff = diff
        self.content = content
        self.locks = locks
        self.lease = lease
        self.tracker = tracker
        self.stager = stager
        self.scratch = scratch if self.stager is not None else None
        self.parallel = parallel or anyio.Semaphore(1)
        self.grafts = grafts if grafts is not None else {}
        self.keep = keep

    def _staging(self) -> Stager:
        # Reached only with a scratch directory, which only a stager gets.
        assert self.stager is not None
        return self.stager

    @property
    def name(self) -> str:
        """The snapshotter's name."""
        return self.snapshotter.name

    async def unpack(
        self,
        manifest: Manifest,
        config_desc: Descriptor,
        config: ConfigFile,
        layer_ready: LayerReady = _always_ready,
        layer_stream: LayerSource = _no_stream,
    ) -> str:
        """Apply every layer of ``manifest``; return the top chain ID.

        Args:
            manifest: The image manifest.
            config_desc: Its config's descriptor (labelled with the top snapshot).
            config: The decoded config (its diff_ids).
            layer_ready: Waits until a layer's blob is stored; a snapshot is
                committed only after that.
            layer_stream: For a layer still downloading, its bytes as they arrive,
                so that it is applied while it downloads.

        Raises:
            FailedPrecondition: The config's diff_ids do not fit the layers, or a
                layer's diffID differs from the config's.
        """
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise FailedPrecondition(
                f"config {config_desc.digest} lists {len(diff_ids)} diff_ids for "
                f"{len(manifest.layers)} layers"
            )
        if not diff_ids:
            raise FailedPrecondition(f"image with config {config_desc.digest} has no layers")
        chains = chain_ids(diff_ids)
        committed = [anyio.Event() for _ in chains]
        async with anyio.create_task_group() as tg:
            for i, layer in enumerate(manifest.layers):
                tg.start_soon(
                    self._layer, i, layer, diff_ids[i], chains, committed, layer_ready, layer_stream
                )
        with contextlib.suppress(NotFound):
            await self.content.update_labels(
                self.namespace, config_desc.digest, {LABEL_GC_REF_SNAPSHOT + self.name: chains[-1]}
            )
        return chains[-1]

    async def exists(self, chain_id: str) -> bool:
        """Whether the namespace has the committed snapshot ``chain_id``."""
        try:
            info = await self.snapshotter.stat(self.namespace, chain_id)
        except NotFound:
            return False
        return info.kind == Kind.COMMITTED

    def _status(
        self, layer: Descriptor, status: UnpackStatus, chain_id: str, seconds: float | None = None
    ) -> None:
        if self.tracker is not None and layer.digest in self.tracker.blobs:
            self.tracker.unpack(layer.digest, status, chain_id=chain_id, seconds=seconds)

    def _time(self, phase: str, seconds: float) -> None:
        if self.tracker is not None:
            self.tracker.timings.add(phase, seconds)

    def _check(self, i: int, layer: Descriptor, got: str, want: str) -> None:
        if got != want:
            raise FailedPrecondition(
                f"layer {i} ({layer.digest}) unpacked to diffID {got}, but the image config "
                f"says {want}: the image is corrupt or was tampered with"
            )

    async def _prepare(self, chain_id: str, parent: str) -> tuple[str, Sequence[Mount]] | None:
        """Prepare the extract snapshot; ``None`` when the layer is already there."""
        labels = {SNAPSHOT_REF_LABEL: chain_id}
        for _ in range(_PREPARE_ATTEMPTS):
            key = extract_key(chain_id)
            try:
                mounts = await self.snapshotter.prepare(
                    self.namespace, key, parent, labels, self.lease
                )
            except AlreadyExists:
                if await self.exists(chain_id):
                    return None
                continue  # the random key collided: try another one
            return key, mounts
        raise FailedPrecondition(f"cannot prepare a snapshot for layer {chain_id}")

    async def _layer(
        self,
        i: int,
        layer: Descriptor,
        diff_id: str,
        chains: list[str],
        committed: list[anyio.Event],
        layer_ready: LayerReady,
        layer_stream: LayerSource,
    ) -> None:
        chain = chains[i]
        async with self.locks.hold(f"sn://{self.name}/{chain}"):
            if await self.exists(chain):
                await self._keep(chain)
                self._status(layer, UnpackStatus.EXISTS, chain)
                committed[i].set()
                return
            self._status(layer, UnpackStatus.WAITING, chain)
            staged = None
            try:
                # The bottom layer has nothing to wait for: it is applied in place.
                if i > 0 and self.scratch is not None and self.grafts.get(self.name, True):
                    staged = await self._stage(i, layer, diff_id, chain, layer_ready, layer_stream)
                started = time.monotonic()
                if i > 0:
                    await committed[i - 1].wait()
                self._time("unpack.wait", time.monotonic() - started)
                if await self._apply(
                    i, layer, diff_id, chain, chains, layer_ready, layer_stream, staged
                ):
                    staged = None
            finally:
                if staged is not None:
                    with anyio.CancelScope(shield=True):
                        await self._staging().discard(staged)
            if i + 1 < len(chains):
                # Crash tests: between layers (this one committed, the next not yet).
                fault_point("unpack.between-layers")
            committed[i].set()
        with contextlib.suppress(NotFound):
            await self.content.update_labels(
                self.namespace, layer.digest, {LABEL_UNCOMPRESSED: diff_id}
            )

    async def _stage(
        self,
        i: int,
        layer: Descriptor,
        diff_id: str,
        chain: str,
        layer_ready: LayerReady,
        layer_stream: LayerSource,
    ) -> StagedLayer:
        scratch = self.scratch
        assert scratch is not None

        async def stage(reader: Callable[[], BinaryIO]) -> StagedLayer:
            return await self._staging().stage(layer, reader, scratch)

        staged = await self._read_layer(i, layer, chain, layer_ready, layer_stream, stage)
        try:
            self._check(i, layer, staged.result.diff_id, diff_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._staging().discard(staged)
            raise
        return staged

    async def _read_layer(
        self,
        i: int,
        layer: Descriptor,
        chain: str,
        layer_ready: LayerReady,
        layer_stream: LayerSource,
        work: Callable[[Callable[[], BinaryIO]], Awaitable[R]],
    ) -> R:
        """Run ``work`` (an apply or a stage) on layer ``i``'s bytes; return once it is stored.

        A layer still downloading is read as it arrives. Its bytes are verified
        only at their end, so when ``work`` fails on them, the download is
        waited for first: if it fails, its error (a digest mismatch, a cut
        connection) is what the pull reports, and this task is cancelled.
        """
        stream = await layer_stream(i)
        if stream is None:
            await layer_ready(i)
        try:
            async with self.parallel:
                self._status(layer, UnpackStatus.APPLYING, chain)
                started = time.monotonic()
                if stream is None:
                    reader = self._reader(layer.digest)
                else:
                    follower = stream

                    def reader() -> BinaryIO:
                        return cast("BinaryIO", follower)

                result = await work(reader)
                self._time("unpack.apply", time.monotonic() - started)
                if stream is not None:
                    # Of which applying layers that were still downloading.
                    self._time("unpack.streamed", time.monotonic() - started)
        except Exception:
            if stream is not None:
                await layer_ready(i)
            raise
        finally:
            if stream is not None:
                stream.close()
        if stream is not None:
            # The stream ended with the blob verified and stored; its record in the
            # namespace is the fetch's last step.
            await layer_ready(i)
        return result

    async def _apply(
        self,
        i: int,
        layer: Descriptor,
        diff_id: str,
        chain: str,
        chains: list[str],
        layer_ready: LayerReady,
        layer_stream: LayerSource,
        staged: StagedLayer | None,
    ) -> bool:
        """Prepare, fill (graft or apply) and commit ``chain``; True if ``staged`` was used."""
        prepared = await self._prepare(chain, chains[i - 1] if i else "")
        if prepared is None:
            await self._keep(chain)
            self._status(layer, UnpackStatus.EXISTS, chain)
            return False
        key, mounts = prepared
        used = False
        try:
            started = time.monotonic()
            if staged is not None:
                used = await self._staging().graft(staged, mounts)
                self.grafts[self.name] = used
                self._time("unpack.graft", time.monotonic() - started)
            if not used:

                async def apply(reader: Callable[[], BinaryIO]) -> ApplyResult:
                    return await self.diff.apply(layer, mounts, reader)

                result = await self._read_layer(i, layer, chain, layer_ready, layer_stream, apply)
                self._check(i, layer, result.diff_id, diff_id)
            applied = time.monotonic()
            # Crash tests: the layer is in an extract snapshot, not committed.
            fault_point("unpack.after-apply")
            try:
                await self.snapshotter.commit(self.namespace, chain, key, lease=self.lease)
            except AlreadyExists:
                # Committed meanwhile by someone not holding our lock (a client through
                # the API can): theirs wins.
                await self._remove(key)
            self._time("unpack.commit", time.monotonic() - applied)
        except BaseException:
            with anyio.CancelScope(shield=True):
                # On a full disk the snapshot's removal needs a database write, which
                # needs a little space: free what the apply wrote first.
                await anyio.to_thread.run_sync(_empty_layer, mounts)
            await self._remove(key, quiet=True)
            raise
        self._status(layer, UnpackStatus.APPLIED, chain)
        return used

    async def _keep(self, chain: str) -> None:
        if self.keep is not None:
            await self.keep(f"snapshots/{self.name}", chain)

    def _reader(self, digest: str) -> Callable[[], BinaryIO]:
        store = self.content.store

        def open_blob() -> BinaryIO:
            reader: BinaryIO = store.open_reader(digest)
            return reader

        return open_blob

    async def _remove(self, key: str, *, quiet: bool = False) -> None:
        """Remove an extract snapshot; ``quiet``: log a failure (the caller has an error)."""
        with anyio.CancelScope(shield=True), contextlib.suppress(NotFound, FailedPrecondition):
            try:
                await self.snapshotter.remove(self.namespace, key)
            except MoorageError as exc:
                if not quiet:
                    raise
                # The lease still holds the snapshot: garbage collection takes it later.
                log.warning("cannot remove extract snapshot %r: %s", key, exc.message)


def _empty_layer(mounts: Sequence[Mount]) -> None:
    """Delete the files a failed apply left in an extract snapshot's writable directory."""
    if len(mounts) != 1:
        return
    mount = mounts[0]
    upper = next((o[len("upperdir="):] for o in mount.options if o.startswith("upperdir=")), None)
    if mount.type == "bind" and "ro" not in mount.options:
        upper = mount.source
    if not upper:
        return
    with contextlib.suppress(OSError), os.scandir(upper) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
