"""The synchronous client: one method per endpoint, typed results, domain errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar, overload
from urllib.parse import quote, urlencode

import msgspec

from runtime.api.constants import JSON, LEASE_HEADER
from runtime.api.types import (
    CommitRequest,
    ContentInfo,
    EventEnvelope,
    Health,
    IngestStatus,
    LabelsRequest,
    Lease,
    LeaseCreateRequest,
    LeaseResource,
    Mount,
    Namespace,
    NamespaceCreateRequest,
    NamespaceLabelsRequest,
    PluginInfo,
    SnapshotCommitRequest,
    SnapshotCreateRequest,
    SnapshotInfo,
    Usage,
    Version,
)
from runtime.client.base import BaseClient, default_address
from runtime.client.containers import ContainersMixin
from runtime.client.images import ImagesMixin
from runtime.client.transport import Response
from runtime.core.errors import from_code
from runtime.plugins.gc.api import GCReport

__all__ = ["Client", "default_address"]

T = TypeVar("T")


class Client(BaseClient, ContainersMixin, ImagesMixin):
    """A client of one daemon, in one namespace, with typed answers.

    Implements :class:`runtime.client.api.HotClient`, as the lean client does;
    the arguments are :class:`runtime.client.base.BaseClient`'s.
    """

    # -- plumbing ---------------------------------------------------------------

    def open(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | Iterable[bytes] | None = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = -1.0,
    ) -> Response:
        """Send a request and return the response once its status is a success.

        Raises:
            MoorageError: the server's error, rebuilt as the matching class.
            Unavailable: the daemon cannot be reached.
        """
        if body is not None:
            data = msgspec.json.encode(body)
        if query:
            path = f"{path}?{urlencode(query, doseq=True)}"
        hdrs = self._headers(headers)
        if data is not None and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = JSON
        return self._send(method, path, hdrs, data, timeout)

    @overload
    def call(self, method: str, path: str, type_: type[T], **kw: Any) -> T: ...

    @overload
    def call(self, method: str, path: str, type_: None = None, **kw: Any) -> None: ...

    def call(self, method: str, path: str, type_: type[T] | None = None, **kw: Any) -> T | None:
        """Send a request and decode the JSON answer into ``type_`` (``None``: discard)."""
        response = self.open(method, path, **kw)
        raw = response.read()
        if type_ is None or not raw:
            return None
        return msgspec.json.decode(raw, type=type_)

    def stream_lines(self, method: str, path: str, **kw: Any) -> Iterator[bytes]:
        """Yield the lines of a streamed (NDJSON) response as they arrive."""
        response = self.open(method, path, timeout=None, **kw)
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield line
        finally:
            response.close()

    # -- system -----------------------------------------------------------------

    def version(self) -> Version:
        """The daemon's version."""
        return self.call("GET", "/v1/version", Version)

    def healthz(self) -> Health:
        """Health of the daemon."""
        return self.call("GET", "/v1/healthz", Health)

    def plugins(self) -> list[PluginInfo]:
        """Every plugin with its status."""
        return self.call("GET", "/v1/plugins", list[PluginInfo])

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document."""
        return self.call("GET", "/v1/openapi.json", dict[str, Any])

    def events(self, filters: list[str] | None = None) -> Iterator[EventEnvelope]:
        """Follow the namespace's events until the stream ends.

        Raises:
            MoorageError: when the server ends the stream with an error line
                (for example a subscriber that fell too far behind).
        """
        for line in self.stream_lines("GET", "/v1/events", query={"filter": filters or []}):
            obj = json.loads(line)
            if "error" in obj and "topic" not in obj:
                raise from_code(obj["error"]["code"], obj["error"]["message"])
            yield msgspec.convert(obj, EventEnvelope)

    # -- namespaces -------------------------------------------------------------

    def namespaces(self) -> list[Namespace]:
        """Every namespace."""
        return self.call("GET", "/v1/namespaces", list[Namespace])

    def get_namespace(self, name: str) -> Namespace:
        """One namespace."""
        return self.call("GET", f"/v1/namespaces/{quote(name, safe='')}", Namespace)

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create a namespace."""
        body = NamespaceCreateRequest(name=name, labels=dict(labels or {}))
        return self.call("POST", "/v1/namespaces", Namespace, body=body)

    def label_namespace(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set namespace labels; an empty value removes one."""
        body = NamespaceLabelsRequest(labels=dict(labels))
        return self.call(
            "PATCH",
            f"/v1/namespaces/{quote(name, safe='')}",
            Namespace,
            body=body,
        )

    def delete_namespace(self, name: str) -> None:
        """Delete an empty namespace."""
        self.call("DELETE", f"/v1/namespaces/{quote(name, safe='')}")

    # -- content ----------------------------------------------------------------

    def content(self, filters: list[str] | None = None) -> list[ContentInfo]:
        """Blobs of the namespace."""
        return self.call(
            "GET",
            "/v1/content",
            list[ContentInfo],
            query={"filter": filters or []},
        )

    def content_info(self, digest: str) -> ContentInfo:
        """One blob."""
        return self.call("GET", f"/v1/content/{digest}", ContentInfo)

    def label_content(self, digest: str, labels: Mapping[str, str]) -> ContentInfo:
        """Set labels on a blob; an empty value removes one."""
        return self.call(
            "PATCH",
            f"/v1/content/{digest}",
            ContentInfo,
            body=LabelsRequest(labels=dict(labels)),
        )

    def delete_content(self, digest: str) -> None:
        """Remove a blob from the namespace."""
        self.call("DELETE", f"/v1/content/{digest}")

    def read_content(
        self, digest: str, offset: int = 0, size: int | None = None
    ) -> Iterator[bytes]:
        """Stream a blob's bytes, optionally a range."""
        headers = {}
        if offset or size is not None:
            end = "" if size is None else str(offset + size - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = self.open("GET", f"/v1/content/{digest}/blob", headers=headers, timeout=None)
        try:
            yield from response.iter_raw()
        finally:
            response.close()

    @staticmethod
    def _ref_path(ref: str) -> str:
        return "/v1/content/ingests/" + quote(ref, safe="/:@")

    def ingests(self) -> list[IngestStatus]:
        """Uploads in progress."""
        return self.call("GET", "/v1/content/ingests", list[IngestStatus])

    def ingest_status(self, ref: str) -> IngestStatus:
        """State of one upload."""
        return self.call("GET", self._ref_path(ref), IngestStatus)

    def write_content(
        self,
        ref: str,
        data: bytes | Iterable[bytes],
        *,
        offset: int | None = None,
        total: int | None = None,
        expected: str | None = None,
        commit: bool = False,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> IngestStatus | ContentInfo:
        """Write ``data`` at ``offset`` into the upload ``ref``; commit at the end if asked."""
        query: dict[str, Any] = {}
        for key, value in (("offset", offset), ("total", total), ("expected", expected)):
            if value is not None:
                query[key] = value
        if commit:
            query["commit"] = "1"
            query["label"] = [f"{k}={v}" for k, v in (labels or {}).items()]
        headers = {"Content-Type": "application/octet-stream"}
        if lease:
            headers[LEASE_HEADER] = lease
        type_: type[IngestStatus | ContentInfo] = ContentInfo if commit else IngestStatus
        return self.call(
            "PUT",
            self._ref_path(ref),
            type_,
            data=data,
            query=query,
            headers=headers,
            timeout=None,
        )

    def commit_content(
        self,
        ref: str,
        *,
        size: int | None = None,
        expected: str | None = None,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> ContentInfo:
        """Verify and publish the upload ``ref``; ``lease`` holds the new blob."""
        body = CommitRequest(size=size, expected=expected, labels=dict(labels or {}))
        headers = {LEASE_HEADER: lease} if lease else None
        return self.call("POST", self._ref_path(ref), ContentInfo, body=body, headers=headers)

    def abort_ingest(self, ref: str) -> None:
        """Abort the upload ``ref``."""
        self.call("DELETE", self._ref_path(ref))

    # -- leases -----------------------------------------------------------------

    def leases(self, filters: list[str] | None = None) -> list[Lease]:
        """Leases of the namespace."""
        return self.call(
            "GET",
            "/v1/leases",
            list[Lease],
            query={"filter": filters or []},
        )

    def create_lease(
        self,
        lease_id: str = "",
        labels: Mapping[str, str] | None = None,
        expire: float | None = None,
    ) -> Lease:
        """Create a lease; ``expire`` in seconds."""
        body = LeaseCreateRequest(id=lease_id, labels=dict(labels or {}), expire=expire)
        return self.call("POST", "/v1/leases", Lease, body=body)

    def delete_lease(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete a lease; ``sync`` waits for a garbage collection to free what it held."""
        self.call("DELETE", f"/v1/leases/{quote(lease_id, safe='')}",
                  query={"sync": "1"} if sync else None)

    # -- garbage collection -----------------------------------------------------

    def gc(self) -> GCReport:
        """Run a garbage collection now, in every namespace, and return its figures."""
        return self.call("POST", "/v1/gc", GCReport)  # type: ignore[no-any-return]

    def lease_resources(self, lease_id: str) -> list[LeaseResource]:
        """What a lease holds."""
        return self.call(
            "GET",
            f"/v1/leases/{quote(lease_id, safe='')}/resources",
            list[LeaseResource],
        )

    def add_lease_resource(self, lease_id: str, type_: str, resource: str) -> None:
        """Hold a resource under a lease."""
        self.call(
            "POST",
            f"/v1/leases/{quote(lease_id, safe='')}/resources",
            body=LeaseResource(type=type_, id=resource),
        )

    # -- snapshots --------------------------------------------------------------

    @staticmethod
    def _sn(snapshotter: str, key: str = "", action: str = "") -> str:
        path = f"/v1/snapshots/{quote(snapshotter, safe='')}"
        if key:
            path += "/" + quote(key, safe="/:@")
        return path + (f"/{action}" if action else "")

    def snapshots(self, snapshotter: str, filters: list[str] | None = None) -> list[SnapshotInfo]:
        """Snapshots of the namespace in one snapshotter."""
        return self.call(
            "GET",
            self._sn(snapshotter),
            list[SnapshotInfo],
            query={"filter": filters or []},
        )

    def prepare_snapshot(
        self,
        snapshotter: str,
        key: str,
        parent: str = "",
        *,
        view: bool = False,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """Prepare an active snapshot (or a view) and return its mounts."""
        body = SnapshotCreateRequest(
            key=key, parent=parent, kind="view" if view else "active", labels=dict(labels or {})
        )
        headers = {LEASE_HEADER: lease} if lease else None
        return self.call(
            "POST",
            self._sn(snapshotter),
            list[Mount],
            body=body,
            headers=headers,
        )

    def commit_snapshot(
        self, snapshotter: str, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Commit an active snapshot as ``name``."""
        self.call(
            "POST",
            self._sn(snapshotter, key, "commit"),
            body=SnapshotCommitRequest(name=name, labels=dict(labels or {})),
        )

    def snapshot(self, snapshotter: str, key: str) -> SnapshotInfo:
        """One snapshot."""
        return self.call("GET", self._sn(snapshotter, key), SnapshotInfo)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        """Remove a snapshot."""
        self.call("DELETE", self._sn(snapshotter, key))

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        """Mounts of an active snapshot or view."""
        return self.call("GET", self._sn(snapshotter, key, "mounts"), list[Mount])

    def snapshot_usage(self, snapshotter: str, key: str) -> Usage:
        """Disk usage of a snapshot."""
        return self.call("GET", self._sn(snapshotter, key, "usage"), Usage)

    def label_snapshot(self, snapshotter: str, key: str, labels: Mapping[str, str]) -> SnapshotInfo:
        """Set labels on a snapshot."""
        return self.call(
            "PATCH",
            self._sn(snapshotter, key),
            SnapshotInfo,
            body=LabelsRequest(labels=dict(labels)),
        )
