"""A small OCI distribution registry on aiohttp that can misbehave on purpose.

It serves :class:`~.blobs.MemoryImage` objects (and raw documents) from memory on
``127.0.0.1:<free port>``, in a thread of its own, and can be told, per blob digest,
to drop the connection half-way, stall, serve wrong bytes or a wrong length, or other
bytes of the right length (:meth:`FakeRegistry.substitute`); :attr:`FakeRegistry.rate`
slows blob bodies down::

    with FakeRegistry() as reg:
        ref = reg.add("crash/one", image)            # "127.0.0.1:PORT/crash/one:latest"
        reg.fault(image.layers[0].digest, Fault.DROP)
        client.pull(ref, plain_http=True)             # ... fails or resumes

Only what a pull needs is implemented: ``GET /v2/``, ``HEAD``/``GET`` of manifests (by
tag or digest) and blobs (with ``Range: bytes=N-``). Every request is counted in
:attr:`FakeRegistry.requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web

from tests.reliability.blobs import MemoryImage, sha256

__all__ = ["FakeRegistry", "Fault"]


class Fault(enum.Enum):
    """How a blob download goes wrong.

    ``DROP`` sends half the body and cuts the connection; ``STALL`` sends half and then
    nothing for :attr:`FakeRegistry.stall_seconds`; ``CORRUPT`` sends the right length
    of wrong bytes; ``SHORT_LENGTH`` announces (and sends) fewer bytes than the blob has;
    ``LONG_LENGTH`` announces and sends more; ``UNAVAILABLE`` answers 503 and
    ``TOO_MANY_REQUESTS`` 429 with ``Retry-After: <FakeRegistry.retry_after>`` (these two
    apply to manifests too).
    """

    DROP = "drop"
    STALL = "stall"
    CORRUPT = "corrupt"
    SHORT_LENGTH = "short-length"
    LONG_LENGTH = "long-length"
    UNAVAILABLE = "unavailable"
    TOO_MANY_REQUESTS = "too-many-requests"


_STATUS_FAULTS = {Fault.UNAVAILABLE: 503, Fault.TOO_MANY_REQUESTS: 429}


@dataclass
class _Rule:
    fault: Fault
    times: int | None  # None: every time


class FakeRegistry:
    """The registry; use as a context manager (it starts and stops its thread)."""

    def __init__(self, *, stall_seconds: float = 120.0) -> None:
        self.stall_seconds = stall_seconds
        #: Bytes per second for blob bodies (``None``: as fast as possible).
        self.rate: float | None = None
        #: ``Retry-After`` value of :attr:`Fault.TOO_MANY_REQUESTS` answers.
        self.retry_after = "1"
        self.blobs: dict[str, bytes] = {}
        self._substitutes: dict[str, bytes] = {}
        self.media_types: dict[str, str] = {}
        self.tags: dict[tuple[str, str], str] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self._rules: dict[str, _Rule] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.port = 0

    # -- content ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def add(self, repo: str, image: MemoryImage, tag: str = "latest") -> str:
        """Serve ``image`` as ``repo:tag``; return the reference to pull."""
        with self._lock:
            self.blobs.update(image.blobs)
            self.media_types.update(image.media_types)
            self.tags[(repo, tag)] = image.root.digest
        return f"{self.host}/{repo}:{tag}"

    def document(self, repo: str, data: bytes, media_type: str, tag: str = "latest") -> str:
        """Serve raw ``data`` as the manifest ``repo:tag`` (malformed ones too)."""
        digest = sha256(data)
        with self._lock:
            self.blobs[digest] = data
            self.media_types[digest] = media_type
            self.tags[(repo, tag)] = digest
        return f"{self.host}/{repo}:{tag}"

    def misnamed(self, repo: str, data: bytes, media_type: str, digest: str) -> str:
        """Serve ``data`` as the manifest ``digest`` it does not hash to; return ``repo@digest``."""
        with self._lock:
            self.blobs[digest] = data
            self.media_types[digest] = media_type
        return f"{self.host}/{repo}@{digest}"

    def fault(self, digest: str, fault: Fault, times: int | None = None) -> None:
        """Make downloads of ``digest`` fail as ``fault`` (the next ``times``, or always)."""
        with self._lock:
            self._rules[digest] = _Rule(fault, times)

    def substitute(self, digest: str, data: bytes) -> None:
        """Serve ``data`` for downloads of ``digest`` (as a bad mirror or proxy might)."""
        with self._lock:
            self._substitutes[digest] = data

    def clear_faults(self) -> None:
        """Serve every blob correctly again, at full speed."""
        with self._lock:
            self._rules.clear()
            self._substitutes.clear()
            self.rate = None

    def _take_rule(self, digest: str) -> Fault | None:
        with self._lock:
            rule = self._rules.get(digest)
            if rule is None:
                return None
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    del self._rules[digest]
            return rule.fault

    def _status_fault(self, digest: str) -> web.Response | None:
        """The 503 or 429 answer a status fault on ``digest`` asks for (and uses up)."""
        with self._lock:
            rule = self._rules.get(digest)
        if rule is None or rule.fault not in _STATUS_FAULTS:
            return None
        self._take_rule(digest)
        status = _STATUS_FAULTS[rule.fault]
        headers = {"Retry-After": self.retry_after} if status == 429 else {}
        return web.json_response({"errors": [{"code": "TOOMANYREQUESTS" if status == 429
                                              else "UNAVAILABLE", "message": "try later"}]},
                                 status=status, headers=headers)

    # -- HTTP ------------------------------------------------------------------------

    async def _root(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        repo, ref = request.match_info["name"], request.match_info["ref"]
        self.requests[("manifest", ref)] += 1
        digest = ref if ref.startswith("sha256:") else self.tags.get((repo, ref))
        if digest is None or digest not in self.blobs:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        busy = self._status_fault(digest)
        if busy is not None:
            return busy
        data = self.blobs[digest]
        headers = {"Docker-Content-Digest": digest,
                   "Content-Type": self.media_types.get(digest, "application/json")}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(headers=headers)
        return web.Response(body=data, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        self.requests[("blob", digest)] += 1
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        start = 0
        range_ = request.headers.get("Range", "")
        if range_.startswith("bytes=") and range_.endswith("-"):
            start = int(range_[len("bytes="):-1] or 0)
        body = data[start:]
        status = 206 if start else 200
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        busy = self._status_fault(digest)
        if busy is not None:
            return busy
        fault = self._take_rule(digest)
        with self._lock:
            substitute = self._substitutes.get(digest)
        if substitute is not None:
            body = substitute[start:]
        if fault is Fault.CORRUPT:
            body = bytes(b ^ 0x5A for b in body)
        elif fault is Fault.SHORT_LENGTH:
            body = body[: max(1, len(body) // 2)]
        elif fault is Fault.LONG_LENGTH:
            body = body + b"\0" * 1024
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if fault in (Fault.DROP, Fault.STALL):
            await response.write(body[: len(body) // 2])
            if fault is Fault.STALL:
                await asyncio.sleep(self.stall_seconds)
            if request.transport is not None:
                request.transport.abort()  # the client sees a cut, not an end
            return response
        if self.rate:
            piece = 64 * 1024
            for at in range(0, len(body), piece):
                await response.write(body[at : at + piece])
                await asyncio.sleep(piece / self.rate)
        else:
            await response.write(body)
        await response.write_eof()
        return response

    # -- lifecycle -------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self._root)
        app.router.add_route("*", r"/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("*", r"/v2/{name:.+}/blobs/{digest}", self._blob)
        return app

    def _serve(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stopped = asyncio.Event()
            # Connections cut on purpose make aiohttp log errors; they are expected here.
            logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
            self._runner = web.AppRunner(self._app(), shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = int(server.sockets[0].getsockname()[1])
            started.set()
            await self._stopped.wait()
            await self._runner.cleanup()

        try:
            loop.run_until_complete(main())
            # Handlers still stalling (Fault.STALL) end here, not at interpreter exit.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    def start(self) -> Self:
        """Start serving in a daemon thread."""
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True,
                                        name="fake-registry")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake registry did not start")
        return self

    def stop(self) -> None:
        """Stop serving; stalled responses are cut."""
        if self._loop is not None and self._stopped is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
