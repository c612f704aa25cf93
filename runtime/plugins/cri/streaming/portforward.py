"""Port-forward: each forwarded connection is a pair of SPDY streams, dialled into the pod.

The client (``portforward.k8s.io``) opens an ``error`` stream and then a
``data`` stream per connection, both carrying ``port`` and ``requestID``
headers. The server dials ``localhost:port`` inside the pod's network
namespace, IPv4 first and then IPv6, copies bytes both ways (a FIN from the
client half-closes the pod socket, the pod's end-of-file FINs the data
stream), and writes a message on the error stream if the dial fails.

Python 3.11 has no ``os.setns``; a socket belongs to the namespace it was
created in, so a throwaway thread enters the pod's namespace with ``setns(2)``
only to create the sockets, and exits: no thread of the daemon ever stays in
a pod's namespace. Connecting and copying then happen on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable

import anyio

from runtime.pkg.namespaces import enter_netns
from runtime.plugins.cri.streaming.session import SpdySession, SpdyStream, StreamClosed
from runtime.plugins.cri.streaming.spdy import RstStatus

__all__ = ["dial_in_netns", "serve_port_forward"]

log = logging.getLogger("moorage.cri.streaming")

_RECV = 64 * 1024


def _sockets_in_netns(netns_path: str) -> tuple[socket.socket, socket.socket | None]:
    """An IPv4 and (if the namespace has IPv6) an IPv6 TCP socket of ``netns_path``."""
    made: list[socket.socket | None] = []
    failure: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            enter_netns(netns_path)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                made.append(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
            except OSError:
                made.append(None)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=enter_and_make, name="moorage-netns-socket", daemon=True)
    thread.start()
    thread.join()
    if failure:
        for sock in made:
            if sock is not None:
                sock.close()
        raise failure[0]
    v4, v6 = made
    assert v4 is not None
    return v4, v6


async def dial_in_netns(netns_path: str | None, port: int) -> socket.socket:
    """A connected, non-blocking TCP socket to localhost:``port`` in the namespace.

    ``netns_path`` None dials the host's own localhost (host-network pods).

    Raises:
        OSError: Neither 127.0.0.1 nor ::1 accepted the connection.
    """
    if netns_path is None:
        v4: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v6: socket.socket | None
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            v6 = None
    else:
        # The thread lives for microseconds; waiting on it from a worker keeps
        # the loop free.
        v4, v6 = await anyio.to_thread.run_sync(_sockets_in_netns, netns_path)
    loop = asyncio.get_running_loop()
    errors = []
    for sock, address in ((v4, ("127.0.0.1", port)), (v6, ("::1", port))):
        if sock is None:
            errors.append("IPv6: unavailable")
            continue
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            errors.append(f"{'IPv4' if sock is v4 else 'IPv6'}: {reason}")
            continue
        except BaseException:
            sock.close()
            if sock is v4 and v6 is not None:
                v6.close()
            raise
        if sock is v4 and v6 is not None:
            v6.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise OSError(errno.ECONNREFUSED, "; ".join(errors))


#: Dials localhost:port for one forwarded connection.
Dialer = Callable[[int], Awaitable[socket.socket]]


async def serve_port_forward(session: SpdySession, dial: Dialer, *, pod: str,
                             pair_timeout: float = 30.0) -> None:
    """Serve every stream pair the client opens until the session ends."""
    pending: dict[str, dict[str, SpdyStream]] = {}
    async with anyio.create_task_group() as tg:

        async def expire(request_id: str) -> None:
            await anyio.sleep(pair_timeout)
            lone = pending.pop(request_id, None)
            for stream in (lone or {}).values():
                log.info("streaming: port-forward request %s never completed its stream pair",
                         request_id)
                await stream.reset(RstStatus.CANCEL)

        while (stream := await session.accept()) is not None:
            kind = stream.header("streamtype")
            if kind not in ("error", "data"):
                log.info("streaming: port-forward stream of type %r refused", kind)
                await stream.reset(RstStatus.PROTOCOL_ERROR)
                continue
            request_id = stream.header("requestid")
            if not request_id:
                # Old clients send no requestID: the error stream comes first and
                # its data stream is the next client stream (id + 2).
                offset = 0 if kind == "error" else 2
                request_id = f"stream-{stream.stream_id - offset}"
            pair = pending.get(request_id)
            if pair is None:
                pair = pending[request_id] = {}
                tg.start_soon(expire, request_id)
            if kind in pair:
                await stream.reset(RstStatus.PROTOCOL_ERROR)
                continue
            pair[kind] = stream
            if len(pair) == 2:
                del pending[request_id]
                tg.start_soon(_forward, pair["error"], pair["data"], dial, pod)
        # The client left: every forwarded connection ends with it.
        tg.cancel_scope.cancel()


async def _forward(error: SpdyStream, data: SpdyStream, dial: Dialer, pod: str) -> None:
    error.discard()  # the client writes nothing there
    text = data.header("port")
    try:
        port = int(text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        await _fail(error, data, f"invalid port {text!r}")
        return
    try:
        sock = await dial(port)
    except OSError as exc:
        await _fail(error, data, f"error forwarding port {port} to pod {pod}: failed to "
                                 f"connect to localhost:{port} inside the pod: {exc.strerror}")
        return
    try:
        await _copy(sock, data)
    finally:
        sock.close()
        await data.close()
        await error.close()


async def _fail(error: SpdyStream, data: SpdyStream, message: str) -> None:
    log.info("streaming: port-forward: %s", message)
    with contextlib.suppress(StreamClosed):
        await error.send(message.encode())
    await error.close()
    await data.close()
    data.discard()


async def _copy(sock: socket.socket, data: SpdyStream) -> None:
    loop = asyncio.get_running_loop()
    async with anyio.create_task_group() as tg:
        done = 0

        def finished() -> None:
            nonlocal done
            done += 1
            if done == 2:
                tg.cancel_scope.cancel()

        async def upstream() -> None:
            # Client -> pod; the client's FIN half-closes the pod socket.
            try:
                while chunk := await data.receive():
                    await loop.sock_sendall(sock, chunk)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                data.discard()
                tg.cancel_scope.cancel()
                return
            if data.reset_status is not None:
                tg.cancel_scope.cancel()
            finished()

        async def downstream() -> None:
            # Pod -> client; the pod's end-of-file FINs the data stream.
            try:
                while chunk := await loop.sock_recv(sock, _RECV):
                    await data.send(chunk)
            except (OSError, StreamClosed):
                tg.cancel_scope.cancel()
                return
            await data.close()
            finished()

        tg.start_soon(upstream)
        tg.start_soon(downstream)
