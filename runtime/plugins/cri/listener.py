"""The CRI socket before gRPC is loaded: bound by the plugin, handed to gRPC when a client speaks.

gRPC and the generated stubs cost the daemon some 13 MiB (grpcio's core
library, libstdc++), which a daemon that no kubelet or ``crictl`` ever drives
should not pay. So ``cri.v1`` binds its unix socket itself with the standard
library (:class:`LazyGrpcSocket`, asyncio only), and gRPC is imported and
started only when a connection sends its first bytes (a probe that connects
and closes, such as a readiness check, loads nothing):

1. gRPC starts two listeners: its server on a sibling path (``.<name>.grpc``,
   :func:`staging_path`), and a second server, the relay target
   (``.<name>.relay``), for the connections accepted before the switch.
2. The staging socket is given the socket's mode (0660) and renamed over the
   socket's path: from that instant a ``connect`` reaches gRPC's own listener,
   and no client ever finds the path missing or refused.
3. The connections accepted before the switch (the one that spoke, others
   that came meanwhile) are relayed byte for byte to the relay target: their
   clients see no reconnect and no backoff, and their first RPC is answered
   once gRPC has started (0.3 to 0.7 s on a loaded 2-core machine). The
   relay target sends each of them an HTTP/2 GOAWAY after
   :data:`RELAY_MAX_AGE` seconds (gRPC's ``max_connection_age``): the
   client finishes the RPCs under way there
   (streams included, however long) and opens its next connection to the
   socket's path, gRPC's own listener. A kubelet's first channel thus moves
   off the relay within seconds, as gRPC clients do when a server ages its
   connections out; the relay's own cost, while it lasts, is 80 to 200 us
   of daemon CPU per RPC (docs/performance.md, entry 22).
4. The old listener accepts (and relays) for :data:`LINGER` seconds more, for
   the ``connect`` calls that resolved the path just before the rename, then
   closes; once no relayed connection is left the relay target is stopped.

gRPC has no way to adopt an accepted or listening file descriptor in Python
(its core's ``grpc_server_add_channel_from_fd`` is not exposed by grpcio), so a
relay for the first connections is the price of not refusing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

__all__ = ["LINGER", "RELAY_MAX_AGE", "SOCKET_MODE", "LazyGrpcSocket", "relay_target_path",
           "staging_path"]

log = logging.getLogger("moorage.cri")

#: Seconds the pre-switch listener keeps accepting after the rename.
LINGER = 1.0

#: Seconds after which the relay target asks a relayed client to reconnect (GOAWAY).
RELAY_MAX_AGE = 1.0

#: Bytes held from a client before gRPC is up; beyond it the client is paused.
_HOLD_LIMIT = 1 << 20

#: The socket file's mode, as containerd's.
SOCKET_MODE = 0o660


def staging_path(path: Path) -> Path:
    """Where gRPC binds before its socket is renamed over ``path``."""
    return path.with_name(f".{path.name}.grpc")


def relay_target_path(path: Path) -> Path:
    """Where the gRPC server for the relayed connections listens (mode 0600)."""
    return path.with_name(f".{path.name}.relay")


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it reads goes to its peer, unchanged.

    A client's side holds what it reads until :meth:`join` gives it an
    upstream (gRPC's socket). Back-pressure is passed along: when one side's
    transport cannot keep up, the other stops reading.
    """

    def __init__(self, owner: LazyGrpcSocket | None = None) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.held = bytearray()
        self.eof = False
        self.lost = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.owner is not None:
            self.owner._accepted(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            return
        self.held += data
        if len(self.held) > _HOLD_LIMIT and self.transport is not None:
            self.transport.pause_reading()
        if self.owner is not None:
            self.owner._spoke()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None:
            return True  # passed on by join()
        if peer.eof:
            self.close()  # both directions are done
            return False
        if peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.peer is not None:
            self.peer.close()
        if self.owner is not None:
            self.owner._gone(self)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # -- relay ------------------------------------------------------------------

    def join(self, upstream: _Side) -> None:
        """Relay to and from ``upstream``: what either side holds first, then everything."""
        self.peer, upstream.peer = upstream, self
        for side, other in ((self, upstream), (upstream, self)):
            assert side.transport is not None and other.transport is not None
            if side.held:
                other.transport.write(bytes(side.held))
                side.held.clear()
            side.transport.resume_reading()
        for side, other in ((self, upstream), (upstream, self)):
            if side.eof and other.transport is not None and other.transport.can_write_eof():
                other.transport.write_eof()

    def close(self) -> None:
        """Close this side (after what is buffered for it is written)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close this side now."""
        if self.transport is not None:
            self.transport.abort()


class LazyGrpcSocket:
    """A unix socket served by gRPC from its first client's first bytes on.

    Args:
        path: The socket's path. Whatever is there is replaced (the daemon's
            state lock guarantees no live daemon owns it).
        start_grpc: Imports gRPC and starts its server on the first path it is
            given (:func:`staging_path`) and the relay target, a server whose
            connections age out after :data:`RELAY_MAX_AGE`, on the second
            (:func:`relay_target_path`); runs once, on the first bytes. If it
            raises, the waiting connections are closed and the next client
            that speaks tries again.
        stop_relay_target: Stops the relay target, once no relayed connection
            is left after the linger.
    """

    def __init__(self, path: Path, start_grpc: Callable[[Path, Path], Awaitable[None]],
                 stop_relay_target: Callable[[], Awaitable[None]], *,
                 linger: float = LINGER) -> None:
        self.path = path
        self.start_grpc = start_grpc
        self.stop_relay_target = stop_relay_target
        self.linger = linger
        #: True once gRPC's listener is at :attr:`path`.
        self.handed_over = False
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[_Side] = set()
        self._relayed: set[_Side] = set()
        self._relaying: set[asyncio.Task[None]] = set()
        self._spoken = anyio.Event()
        self._lock = anyio.Lock()
        self._closed = False
        self._drained = anyio.Event()

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Bind and listen at :attr:`path` (mode 0660), replacing what is there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # Before listen(): no client can connect while the mode is the umask's.
            os.chmod(self.path, SOCKET_MODE)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: _Side(self), sock=sock)
        except BaseException:
            sock.close()
            raise

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Open, then hand over to gRPC when a client speaks (a task of the daemon's)."""
        await self.open()
        task_status.started()
        while not self.handed_over and not self._closed:
            await self._spoken.wait()
            await self._hand_over()
        if not self.handed_over:
            return
        await anyio.sleep(self.linger)
        self._stop_listening()
        while self._clients or self._relayed or self._relaying:
            await self._drained.wait()
            self._drained = anyio.Event()
        if not self._closed:
            await self.stop_relay_target()
            log.debug("cri.v1: no relayed connection left; relay target stopped")

    async def stop_accepting(self) -> None:
        """Accept no more connections; a hand-over under way finishes first."""
        self._closed = True
        async with self._lock:
            self._stop_listening()

    async def close(self) -> None:
        """Close every connection still open through this socket and remove its path.

        gRPC's server is its owner's to stop, before this (so that its clients
        are told to go away first).
        """
        await self.stop_accepting()
        for side in [*self._clients, *self._relayed]:
            side.abort()
        self._clients.clear()
        self._relayed.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for leftover in (staging_path(self.path), relay_target_path(self.path)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    # -- hand-over ------------------------------------------------------------------

    async def _hand_over(self) -> None:
        async with self._lock:
            if self._closed or self.handed_over:
                return
            staging, target = staging_path(self.path), relay_target_path(self.path)
            try:
                for leftover in (staging, target):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
                await self.start_grpc(staging, target)
                os.chmod(target, 0o600)
                os.chmod(staging, SOCKET_MODE)
                os.rename(staging, self.path)
            except Exception:
                log.exception("cri.v1: gRPC did not start on %s; closing %d waiting "
                              "connection(s)", self.path, len(self._clients))
                for side in list(self._clients):
                    side.abort()
                self._spoken = anyio.Event()
                return
            self.handed_over = True
            log.info("cri.v1: gRPC serves %s (%d connection(s) relayed)", self.path,
                     len(self._clients))
            for side in list(self._clients):
                await self._relay(side)

    async def _relay(self, client: _Side) -> None:
        self._clients.discard(client)
        if client.lost:
            return
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_unix_connection(
                _Side, str(relay_target_path(self.path)))
        except OSError as exc:
            log.warning("cri.v1: relaying a connection to gRPC: %s", exc)
            client.abort()
            return
        if client.lost:
            upstream.close()
            return
        self._relayed.add(client)
        client.join(upstream)

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- called by _Side ------------------------------------------------------------------

    def _accepted(self, side: _Side) -> None:
        self._clients.add(side)
        if self.handed_over:
            # Accepted in the linger window: relayed at once.
            task = asyncio.get_running_loop().create_task(self._relay(side))
            self._relaying.add(task)
            task.add_done_callback(self._relayed_one)

    def _relayed_one(self, task: asyncio.Task[None]) -> None:
        self._relaying.discard(task)
        self._drained.set()

    def _spoke(self) -> None:
        self._spoken.set()

    def _gone(self, side: _Side) -> None:
        self._clients.discard(side)
        self._relayed.discard(side)
        self._drained.set()
