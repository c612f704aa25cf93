"""Image volumes: a CRI ``Mount`` naming an image shows that image's root filesystem, read-only.

The kubelet pulls the image first (KEP-4639); CreateContainer refuses one that
is not present. Each image volume of a container gets a read-only snapshot
view of the image's chain, key ``<container id>-image-volume-<n>`` (``n``: the
mount's index in the config), made through the snapshot service. The
container's record names every view in a ``containerd.io/gc.ref.snapshot``
label, so the garbage collector keeps them while the container exists and
takes them with it; RemoveContainer (and start-up recovery, for a container a
crash left half made) removes them at once.

The view is mounted on the host only for the ``runc create``: under
``<state>/image-volumes/<container id>/<n>`` (and the ``image_sub_path``
directory, resolved inside the image's root, bound on ``<n>.sub``), which the
spec binds (``rbind``, ``ro``) on the mount's ``container_path``. Once the
task exists its mount namespace holds its own copy, so the host's is unmounted
straight away: a daemon restart finds nothing mounted to keep track of, and
recovery unmounts whatever a crash in between left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from runtime.api.mounts import Mount
from runtime.core.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg import mount as mounting
from runtime.plugins.cri.images import CriImage, CriImages
from runtime.plugins.cri.messages import pb
from runtime.plugins.gc.api import LABEL_REF_SNAPSHOT
from runtime.plugins.snapshots.api import Snapshots

__all__ = ["ImageVolumes", "image_volume_indices", "view_key"]

log = logging.getLogger("moorage.cri")


def image_volume_indices(mounts: Sequence[pb.Mount]) -> list[int]:
    """The indices of the mounts that name an image."""
    return [i for i, m in enumerate(mounts) if m.image.image]


def view_key(container_id: str, index: int) -> str:
    """The snapshot key of the view behind a container's mount ``index``."""
    return f"{container_id}-image-volume-{index}"


class ImageVolumes(msgspec.Struct):
    """The image volumes of the CRI's containers.

    Args:
        namespace: The Moorage namespace of the containers and images.
        snapshots: The snapshot service.
        snapshotter: Where the views are made (the containers' snapshotter).
        images: The CRI image service (resolves a mount's image).
        base: Where views are mounted on the host while a task is created.
    """

    namespace: str
    snapshots: Snapshots
    snapshotter: str
    images: CriImages
    base: Path

    def gc_labels(self, container_id: str, mounts: Sequence[pb.Mount]) -> dict[str, str]:
        """Labels for the container's record that keep its views from the garbage collector."""
        return {f"{LABEL_REF_SNAPSHOT}{self.snapshotter}/image-volume-{i}":
                view_key(container_id, i) for i in image_volume_indices(mounts)}

    async def resolve(self, mounts: Sequence[pb.Mount]) -> dict[int, CriImage]:
        """The images of ``mounts``' image volumes by index; sets each ``image.image_ref``.

        ``image_ref`` becomes the image's id, which ContainerStatus reports.

        Raises:
            NotFound: An image is not present (the kubelet pulls it first).
        """
        found: dict[int, CriImage] = {}
        for index in image_volume_indices(mounts):
            spec = mounts[index].image
            image = await self.images.resolve(spec.image)
            if image is None:
                raise NotFound(f"image volume {mounts[index].container_path!r}: image "
                               f"{spec.image!r} is not present (pull it first)")
            spec.image_ref = image.id
            found[index] = image
        return found

    def sources(self, container_id: str, mounts: Sequence[pb.Mount]) -> dict[int, str]:
        """Where each image volume is mounted on the host for the create, by index."""
        return {i: str(self._target(container_id, i, mounts[i].image_sub_path))
                for i in image_volume_indices(mounts)}

    def _target(self, container_id: str, index: int, sub_path: str) -> Path:
        view = self.base / container_id / str(index)
        return view.with_name(f"{index}.sub") if sub_path else view

    async def mount(self, container_id: str, mounts: Sequence[pb.Mount],
                    images: dict[int, CriImage]) -> None:
        """Make the views of the image volumes and mount them at their :meth:`sources`.

        What is made is left for :meth:`release` to undo when this fails part-way.

        Raises:
            InvalidArgument: An ``image_sub_path`` climbs out of the image, or
                is not a directory in it.
            FailedPrecondition: A view could not be mounted.
        """
        snapshots = self.snapshots.get(self.snapshotter)
        for index, image in images.items():
            mount = mounts[index]
            chain, _ = await self.images.rootfs(image, self.snapshotter)
            view = await snapshots.view(self.namespace, view_key(container_id, index), chain)
            target = self.base / container_id / str(index)
            try:
                await anyio.to_thread.run_sync(
                    _mount_view, view, target, mount.image_sub_path, mount.image.image)
            except OSError as exc:
                raise FailedPrecondition(f"image volume {mount.container_path!r}: "
                                         f"{exc}") from None

    async def unmount(self, container_id: str) -> None:
        """Unmount the container's views from the host (the task keeps its own copies)."""
        await anyio.to_thread.run_sync(_unmount_dir, self.base / container_id)

    async def release(self, container_id: str, keys: Sequence[str]) -> None:
        """Unmount the container's views and remove them (``keys``: their snapshot keys).

        What is already gone is no error.
        """
        await self.unmount(container_id)
        snapshots = self.snapshots.get(self.snapshotter)
        for key in keys:
            with contextlib.suppress(NotFound):
                await snapshots.remove(self.namespace, key)

    def unmount_leftovers(self) -> None:
        """Unmount every view a crash left mounted on the host (at start, before serving)."""
        if not self.base.is_dir():
            return
        for entry in self.base.iterdir():
            try:
                _unmount_dir(entry)
            except OSError as exc:
                log.warning("image volumes of %s: %s", entry.name, exc)


def _mount_view(view: Sequence[Mount], target: Path, sub_path: str, image: str) -> None:
    """Mount ``view`` on ``target``, and its ``sub_path`` on ``<target>.sub`` if given."""
    target.mkdir(parents=True, exist_ok=True)
    mounting.mount_all(view, target)
    if not sub_path:
        return
    # Imported by the first sub path, not with the plugin (it brings tarfile).
    from runtime.pkg.archive import inroot

    try:
        root = inroot.open_root(str(target))
        try:
            fd = inroot.open_in_root(root, sub_path, os.O_PATH | os.O_DIRECTORY)
        except NotFound:
            raise InvalidArgument(f"image_sub_path {sub_path!r} is not a directory of image "
                                  f"{image!r} (it does not exist, or is a file)") from None
        except InvalidArgument as exc:
            # Anything else openat2 refused (ELOOP...).
            raise InvalidArgument(f"image_sub_path {sub_path!r} of image {image!r}: "
                                  f"{exc.message}") from None
        finally:
            os.close(root)
        sub = target.with_name(f"{target.name}.sub")
        try:
            sub.mkdir(exist_ok=True)
            # The descriptor, not a path: what was resolved inside the image is bound.
            mounting.bind_mount(f"/proc/self/fd/{fd}", str(sub))
        finally:
            os.close(fd)
    except BaseException:
        mounting.unmount(target)
        raise


def _unmount_dir(directory: Path) -> None:
    """Unmount everything mounted on ``directory``'s entries, then remove it."""
    if not directory.is_dir():
        return
    # The sub-path binds first: each lies on top of its view.
    for entry in sorted(directory.iterdir(), key=lambda p: not p.name.endswith(".sub")):
        mounting.unmount(entry, detach=True)
    shutil.rmtree(directory, ignore_errors=True)

