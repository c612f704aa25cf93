"""The daemon's side of a proxy snapshotter: the Snapshotter contract over HTTP on a unix socket.

:func:`connect` is what :mod:`runtime.core.proxy` calls for a
``[proxy_plugins.<name>]`` section of type ``snapshotter``. Each method is one
``POST /snapshotter/<method>`` (see :mod:`.protocol`), bounded by the
section's timeout. Failures are translated here, at the boundary, into
:mod:`runtime.core.errors`:

* an error reply becomes the class of its ``code`` (:func:`~runtime.core.errors.from_code`);
* no answer within the timeout, a refused connection or a dropped one become
  :class:`~runtime.core.errors.Unavailable`, naming the proxy;
* a reply that does not decode becomes :class:`~runtime.core.errors.MoorageError`.

The client runs on asyncio (it uses aiohttp), as the daemon does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, final

import aiohttp
import msgspec

from runtime.core.errors import MoorageError, NotImplementedYet, Unavailable, from_code
from runtime.core.proxy import ProxyTarget
from runtime.plugins.snapshots.api import Info, Mount, Usage
from runtime.plugins.snapshots.proxy import protocol
from runtime.plugins.snapshots.proxy.protocol import (
    CommitRequest,
    CreateRequest,
    EmptyReply,
    EmptyRequest,
    ErrorReply,
    Health,
    InfoReply,
    InfosReply,
    KeyRequest,
    MountsReply,
    UpdateRequest,
    UsageReply,
    WalkRequest,
)

__all__ = ["ProxySnapshotter", "connect"]

R = TypeVar("R", bound=msgspec.Struct)

# Any host will do: the unix connector ignores it, but the URL needs one.
_BASE = "http://proxy"
_ENCODER = msgspec.json.Encoder()
_ERROR = msgspec.json.Decoder(ErrorReply)
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in {c.reply for c in protocol.CALLS.values()} | {Health}
}


async def connect(target: ProxyTarget) -> ProxySnapshotter:
    """Open a client of ``target`` and check, once, that it serves snapshotters.

    Raises:
        Unavailable: The server is not reachable, did not answer within the
            timeout, or does not serve this protocol's snapshotter type.
        NotImplementedYet: Not running on asyncio.
    """
    client = ProxySnapshotter(target)
    try:
        await client.probe()
    except BaseException:
        await client.close()
        raise
    return client


@final
class ProxySnapshotter:
    """A :class:`~runtime.plugins.snapshots.api.Snapshotter` served by another process.

    Args:
        target: The proxy's name, socket and timeout.
    """

    def __init__(self, target: ProxyTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # -- the Snapshotter contract -------------------------------------------

    async def stat(self, key: str) -> Info:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.stat`."""
        return (await self._call("stat", KeyRequest(key=key), InfoReply)).info

    async def update(self, key: str, labels: Mapping[str, str]) -> Info:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.update`."""
        request = UpdateRequest(key=key, labels=dict(labels))
        return (await self._call("update", request, InfoReply)).info

    async def usage(self, key: str) -> Usage:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.usage`."""
        return (await self._call("usage", KeyRequest(key=key), UsageReply)).usage

    async def mounts(self, key: str) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.mounts`."""
        return (await self._call("mounts", KeyRequest(key=key), MountsReply)).mounts

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.prepare`."""
        request = CreateRequest(key=key, parent=parent, labels=dict(labels or {}))
        return (await self._call("prepare", request, MountsReply)).mounts

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.view`."""
        request = CreateRequest(key=key, parent=parent, labels=dict(labels or {}))
        return (await self._call("view", request, MountsReply)).mounts

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.commit`."""
        request = CommitRequest(name=name, key=key, labels=dict(labels or {}))
        await self._call("commit", request, EmptyReply)

    async def remove(self, key: str) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.remove`."""
        await self._call("remove", KeyRequest(key=key), EmptyReply)

    async def walk(self, *filters: str) -> list[Info]:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.walk`."""
        return (await self._call("walk", WalkRequest(filters=list(filters)), InfosReply)).infos

    async def cleanup(self) -> None:
        """See :meth:`runtime.plugins.snapshots.api.Snapshotter.cleanup`."""
        await self._call("cleanup", EmptyRequest(), EmptyReply)

    async def close(self) -> None:
        """Close this client's connections (not the server's snapshotter). Idempotent."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- transport ------------------------------------------------------------

    async def probe(self) -> Health:
        """``GET /health``: check the server speaks this protocol and serves snapshotters.

        Raises:
            Unavailable: Unreachable, too slow, or serving something else.
        """
        with self._errors("health", unreachable="is unreachable"):
            async with self._open().get(f"{_BASE}/health") as response:
                health = await self._read(response, "health", Health)
        if health.protocol != protocol.PROTOCOL_VERSION or "snapshotter" not in health.types:
            raise Unavailable(
                f"proxy {self.target.name} at {self.target.address} serves protocol "
                f"{health.protocol} for {health.types}; this daemon needs protocol "
                f"{protocol.PROTOCOL_VERSION} for 'snapshotter'"
            )
        return health

    async def _call(self, method: str, request: msgspec.Struct, reply: type[R]) -> R:
        body = _ENCODER.encode(request)
        with self._errors(method):
            async with self._open().post(
                f"{_BASE}/snapshotter/{method}",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                return await self._read(response, method, reply)

    async def _read(self, response: aiohttp.ClientResponse, method: str, reply: type[R]) -> R:
        raw = await response.read()
        if response.status >= 300:
            try:
                error = _ERROR.decode(raw).error
            except msgspec.DecodeError:
                raise MoorageError(
                    f"proxy {self.target.name}: {method} answered HTTP {response.status} "
                    f"without an error body: {raw[:200]!r}"
                ) from None
            raise from_code(error.code, error.message)
        try:
            result: R = _DECODERS[reply].decode(raw)
        except msgspec.DecodeError as exc:
            raise MoorageError(
                f"proxy {self.target.name} sent an invalid {method} reply: {exc}"
            ) from exc
        return result

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use inside the running loop."""
        if self._closed:
            raise Unavailable(f"proxy {self.target.name} client is closed")
        if self._session is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise NotImplementedYet("proxy plugins need the asyncio event loop") from None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.target.path),
                # One budget for connecting, sending and reading the whole reply.
                timeout=aiohttp.ClientTimeout(total=self.target.timeout),
            )
        return self._session

    @contextmanager
    def _errors(self, method: str, *, unreachable: str = "is unavailable") -> Iterator[None]:
        """Translate aiohttp and timeout failures into :class:`Unavailable` naming the proxy."""
        name, address = self.target.name, self.target.address
        try:
            yield
        except TimeoutError as exc:  # aiohttp's own timeout errors subclass it
            raise Unavailable(
                f"proxy {name} did not answer within {self.target.timeout:g}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error)
            raise Unavailable(f"proxy {name} at {address} {unreachable}: {reason}") from exc
        except aiohttp.ClientError as exc:
            raise Unavailable(f"proxy {name} at {address} failed {method}: {exc}") from exc
