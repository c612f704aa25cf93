"""Client methods for images, mixed into :class:`runtime.client.Client`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from runtime.api.types import (
    CheckResult,
    Failed,
    ImageCreateRequest,
    ImageDescriptor,
    ImageInfo,
    ImageProgress,
    ImagePullRequest,
    ImagePushRequest,
    ImageRootfs,
    ImageUpdateRequest,
    ImageUsage,
)
from runtime.core.errors import from_code

if TYPE_CHECKING:
    from runtime.client.transport import Response

__all__ = ["ImagesMixin"]

_progress = msgspec.json.Decoder(ImageProgress)


def _path(name: str, action: str = "") -> str:
    # Names keep their "/", ":" and "@": the route matches the rest of the path.
    return "/v1/images/" + quote(name, safe="/:@") + (f"/{action}" if action else "")


class ImagesMixin:
    """``/v1/images``; see :class:`runtime.client.Client` for the plumbing."""

    if TYPE_CHECKING:

        def call(self, method: str, path: str, type_: Any = None, **kw: Any) -> Any:  # noqa: D102
            ...

        def stream_lines(self, method: str, path: str, **kw: Any) -> Iterator[bytes]:  # noqa: D102
            ...

        open: Callable[..., Response]

    def images(self, filters: Sequence[str] | None = None) -> list[ImageInfo]:
        """Images of the namespace (filters: ``name``, ``target.digest``, ``labels.K``...)."""
        result: list[ImageInfo] = self.call(
            "GET", "/v1/images", list[ImageInfo], query={"filter": list(filters or [])}
        )
        return result

    def image(self, name: str) -> ImageInfo:
        """One image (short names are normalised: ``busybox``)."""
        result: ImageInfo = self.call("GET", _path(name), ImageInfo)
        return result

    def create_image(
        self, name: str, target: ImageDescriptor, labels: Mapping[str, str] | None = None
    ) -> ImageInfo:
        """Record an image over content already in the store (``tag`` uses this)."""
        body = ImageCreateRequest(name=name, target=target, labels=dict(labels or {}))
        result: ImageInfo = self.call("POST", "/v1/images", ImageInfo, body=body)
        return result

    def update_image(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        target: ImageDescriptor | None = None,
        fieldpaths: Sequence[str] = (),
    ) -> ImageInfo:
        """Set labels (empty value removes), replace the target, or apply ``fieldpaths``."""
        body = ImageUpdateRequest(
            labels=dict(labels or {}), target=target, fieldpaths=list(fieldpaths)
        )
        result: ImageInfo = self.call("PATCH", _path(name), ImageInfo, body=body)
        return result

    def delete_image(self, name: str, *, sync: bool = False, target: str = "") -> None:
        """Delete an image record (``sync``: wait for garbage collection)."""
        query = {"sync": "1"} if sync else {}
        if target:
            query["target"] = target
        self.call("DELETE", _path(name), query=query)

    def _progress(self, path: str, body: msgspec.Struct) -> Iterator[ImageProgress]:
        for line in self.stream_lines("POST", path, body=body):
            message = _progress.decode(line)
            if isinstance(message, Failed):
                raise from_code(message.code, message.message)
            yield message

    def pull(
        self,
        ref: str,
        *,
        platforms: Sequence[str] = (),
        all_platforms: bool = False,
        snapshotter: str = "",
        unpack: bool = True,
        plain_http: bool = False,
        hosts_dir: str = "",
        user: str = "",
        password: str = "",
        max_concurrent_downloads: int = 0,
    ) -> Iterator[ImageProgress]:
        """Pull an image; yields progress, ending with a ``ProgressDone``.

        Raises:
            MoorageError: The pull failed (raised when its error line arrives).
        """
        body = ImagePullRequest(
            ref=ref,
            platforms=list(platforms),
            all_platforms=all_platforms,
            snapshotter=snapshotter,
            unpack=unpack,
            plain_http=plain_http,
            hosts_dir=hosts_dir,
            user=user,
            password=password,
            max_concurrent_downloads=max_concurrent_downloads,
        )
        return self._progress("/v1/images/pull", body)

    def push(
        self,
        name: str,
        ref: str = "",
        *,
        platforms: Sequence[str] = (),
        plain_http: bool = False,
        hosts_dir: str = "",
        user: str = "",
        password: str = "",
    ) -> Iterator[ImageProgress]:
        """Push image ``name`` to ``ref`` (default: its own name); yields progress."""
        body = ImagePushRequest(
            name=name,
            ref=ref,
            platforms=list(platforms),
            plain_http=plain_http,
            hosts_dir=hosts_dir,
            user=user,
            password=password,
        )
        return self._progress("/v1/images/push", body)

    def import_images(
        self,
        data: bytes | Iterable[bytes],
        *,
        base_name: str = "",
        unpack: bool = True,
        snapshotter: str = "",
    ) -> list[ImageInfo]:
        """Import an OCI layout or ``docker save`` tar (bytes or an iterable of chunks)."""
        query = {
            "base_name": base_name,
            "unpack": "1" if unpack else "0",
            "snapshotter": snapshotter,
        }
        result: list[ImageInfo] = self.call(
            "POST",
            "/v1/images/import",
            list[ImageInfo],
            data=data,
            query=query,
            headers={"Content-Type": "application/x-tar"},
            timeout=None,
        )
        return result

    def export_images(
        self, names: Sequence[str], *, platforms: Sequence[str] = (), all_platforms: bool = False
    ) -> Iterator[bytes]:
        """Stream an OCI layout tar of ``names``."""
        query: dict[str, Any] = {"name": list(names), "platform": list(platforms)}
        if all_platforms:
            query["all_platforms"] = "1"
        response = self.open("GET", "/v1/images/export", query=query, timeout=None)
        try:
            yield from response.iter_raw()
        finally:
            response.close()

    def check_image(self, name: str, platforms: Sequence[str] = ()) -> CheckResult:
        """Whether every blob of the image is present."""
        result: CheckResult = self.call(
            "GET", _path(name, "check"), CheckResult, query={"platform": list(platforms)}
        )
        return result

    def image_usage(self, name: str, snapshotter: str = "") -> ImageUsage:
        """Bytes of the image's blobs and snapshots."""
        result: ImageUsage = self.call(
            "GET", _path(name, "usage"), ImageUsage, query={"snapshotter": snapshotter}
        )
        return result

    def image_rootfs(self, name: str, snapshotter: str = "", platform: str = "") -> ImageRootfs:
        """Unpack if needed; the image's top chain ID and run config."""
        result: ImageRootfs = self.call(
            "GET",
            _path(name, "rootfs"),
            ImageRootfs,
            query={"snapshotter": snapshotter, "platform": platform},
            timeout=None,
        )
        return result
