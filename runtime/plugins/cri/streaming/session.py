"""A server-side SPDY/3.1 session: the peer opens streams, the server answers on them.

The session reads bytes through a ``receive`` callable (``b""`` at end of
input) and writes through a ``send`` callable, so the same code serves a raw
upgraded HTTP connection and SPDY tunnelled in websocket messages. Every
stream the client opens is answered with an empty SYN_REPLY at once (the
client's ``CreateStream`` waits for it) and then handed to :meth:`accept`.

Inbound data is buffered per stream up to ``stream_buffer`` bytes; beyond
that the read loop waits, which stops reading the connection and lets TCP
push back on the client (spdystream keeps no flow-control windows).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable

import anyio

from runtime.plugins.cri.streaming.spdy import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    GoAwayStatus,
    Headers,
    HeadersFrame,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    SessionError,
    SettingsFrame,
    StreamError,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
)

__all__ = ["SpdySession", "SpdyStream", "StreamClosed"]

log = logging.getLogger("moorage.cri.streaming")

#: Largest DATA frame the session writes.
_CHUNK = 32 * 1024


class StreamClosed(Exception):
    """The stream (or the whole session) can take no more writes."""


class SpdyStream:
    """One stream the client opened."""

    def __init__(self, session: SpdySession, stream_id: int, headers: Headers) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._remote_done = False  # FIN or RST from the client, or the session ended
        self._local_done = False  # we sent FIN or RST
        self._discard = False
        #: The status of the client's RST_STREAM, if it reset the stream.
        self.reset_status: int | None = None
        self._readable = anyio.Event()
        self._drained = anyio.Event()

    def header(self, name: str) -> str:
        """The first value of header ``name`` (lower case), ``""`` when absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    @property
    def remote_closed(self) -> bool:
        """Whether the client will send nothing more on this stream."""
        return self._remote_done

    async def receive(self) -> bytes:
        """The next bytes the client sent; ``b""`` once it half-closed or reset the stream."""
        while not self._chunks:
            if self._remote_done:
                return b""
            self._readable = anyio.Event()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= self.session.stream_buffer:
            self._drained.set()
        return data

    async def send(self, data: bytes) -> None:
        """Send ``data`` in DATA frames; StreamClosed once the stream or session is gone."""
        for start in range(0, len(data), _CHUNK):
            if self._local_done or self.reset_status is not None:
                raise StreamClosed(f"stream {self.stream_id} is closed")
            await self.session.write(DataFrame(self.stream_id, data[start:start + _CHUNK]))

    async def close(self) -> None:
        """Half-close: FIN, the client reads end-of-file. Idempotent; never raises."""
        if self._local_done or self.reset_status is not None:
            return
        self._local_done = True
        self.session._forget_if_done(self)
        with contextlib.suppress(StreamClosed):
            await self.session.write(DataFrame(self.stream_id, b"", fin=True))

    async def reset(self, status: int = RstStatus.CANCEL) -> None:
        """Abort the stream both ways (RST_STREAM). Idempotent; never raises."""
        self.discard()
        if self._local_done and self._remote_done:
            return
        self._local_done = True
        self._end_remote()
        self.session._forget_if_done(self)
        if self.reset_status is None:
            with contextlib.suppress(StreamClosed):
                await self.session.write(RstStreamFrame(self.stream_id, status))

    def discard(self) -> None:
        """Drop what the client sends from now on (nobody reads this stream any more)."""
        self._discard = True
        self._chunks.clear()
        self._buffered = 0
        self._drained.set()

    # -- fed by the session's read loop -----------------------------------

    def _end_remote(self) -> None:
        self._remote_done = True
        self._readable.set()
        self._drained.set()

    async def _deliver(self, data: bytes) -> None:
        if self._discard or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()
        while self._buffered > self.session.stream_buffer and not self._discard:
            self._drained = anyio.Event()
            await self._drained.wait()


class SpdySession:
    """The SPDY/3.1 server side of one connection.

    Args:
        send: Writes bytes to the client (waits while its buffer is full).
        stream_buffer: Inbound bytes held per stream before reading pauses.
        idle_timeout: Seconds without any frame either way before the session ends.
        max_streams: Streams the client may have open at once; more are refused.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]], *,
                 stream_buffer: int = 1 << 20, idle_timeout: float = 4 * 3600.0,
                 max_streams: int = 1000, decoder: FrameDecoder | None = None) -> None:
        self._send = send
        self.stream_buffer = stream_buffer
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self._decoder = decoder or FrameDecoder()
        self._encoder = FrameEncoder()
        self._write_lock = anyio.Lock()
        self._streams: dict[int, SpdyStream] = {}
        self._last_stream_id = 0
        self._new_send, self._new_receive = anyio.create_memory_object_stream[
            SpdyStream | None](math.inf)
        self._broken = False
        self._went_away = False
        #: Whether the client sent GOAWAY (it opens no more streams).
        self.peer_went_away = False
        self._activity = 0
        #: Set once the read loop has ended (client gone, GOAWAY sent, or error).
        self.closed = anyio.Event()
        #: Why the session ended, for the log.
        self.close_reason = ""

    async def accept(self) -> SpdyStream | None:
        """The next stream the client opened; ``None`` once the session has ended."""
        try:
            return await self._new_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None

    async def write(self, frame: Frame) -> None:
        """Encode and send one frame; StreamClosed once the connection is gone."""
        if self._broken:
            raise StreamClosed("the session has ended")
        async with self._write_lock:
            if self._broken:
                raise StreamClosed("the session has ended")
            # Encoded under the lock: header blocks share one deflate context,
            # so they must reach the wire in the order they were compressed.
            data = self._encoder.encode(frame)
            try:
                await self._send(data)
            except (OSError, RuntimeError) as exc:
                self._broken = True
                raise StreamClosed(f"connection lost: {exc}") from exc
            self._activity += 1

    async def go_away(self, status: int = GoAwayStatus.OK) -> None:
        """Tell the client no more streams are accepted (GOAWAY). Never raises."""
        if self._went_away:
            return
        self._went_away = True
        with contextlib.suppress(StreamClosed):
            await self.write(GoAwayFrame(self._last_stream_id, status))

    async def run(self, receive: Callable[[], Awaitable[bytes]]) -> None:
        """Read and dispatch frames until the client leaves or breaks the protocol."""
        try:
            while True:
                seen = self._activity
                with anyio.move_on_after(self.idle_timeout) as idle:
                    data = await receive()
                if idle.cancelled_caught:
                    if self._activity != seen:
                        continue
                    self.close_reason = f"idle for {self.idle_timeout:g} s"
                    await self.go_away()
                    return
                if not data:
                    self.close_reason = self.close_reason or "client closed the connection"
                    return
                self._activity += 1
                try:
                    frames = self._decoder.feed(data)
                except SessionError as exc:
                    self.close_reason = f"protocol error: {exc}"
                    log.info("streaming: SPDY session ended: %s", exc)
                    await self.go_away(exc.status)
                    return
                for frame in frames:
                    if not await self._dispatch(frame):
                        return
        except (OSError, RuntimeError) as exc:
            self.close_reason = f"connection lost: {exc}"
        finally:
            self._finish()

    def _finish(self) -> None:
        for stream in self._streams.values():
            stream._end_remote()
        self._new_send.close()
        # Streams opened but never accepted die with the session.
        while True:
            try:
                self._new_receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        self._new_receive.close()
        self.closed.set()

    async def _protocol_error(self, message: str) -> bool:
        self.close_reason = f"protocol error: {message}"
        log.info("streaming: SPDY session ended: %s", message)
        await self.go_away(GoAwayStatus.PROTOCOL_ERROR)
        return False

    async def _dispatch(self, frame: Frame | StreamError) -> bool:
        """Handle one frame; False ends the session."""
        if isinstance(frame, DataFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                if frame.stream_id > self._last_stream_id or frame.stream_id % 2 == 0:
                    # Data for a stream the client never opened: it is not
                    # speaking SPDY (or not to us); stop reading it.
                    return await self._protocol_error(
                        f"DATA for stream {frame.stream_id}, which was never opened")
                return True  # late data for a stream that ended: dropped
            if stream.remote_closed:
                if stream.reset_status is None and not stream._discard:
                    await self._rst(frame.stream_id, RstStatus.STREAM_ALREADY_CLOSED)
                return True
            await stream._deliver(frame.data)
            if frame.fin:
                stream._end_remote()
                self._forget_if_done(stream)
            return True
        if isinstance(frame, SynStreamFrame):
            return await self._open(frame)
        if isinstance(frame, StreamError):
            log.info("streaming: refusing stream %d: %s", frame.stream_id, frame.message)
            if frame.stream_id > self._last_stream_id and frame.stream_id % 2 == 1:
                self._last_stream_id = frame.stream_id
            await self._rst(frame.stream_id, frame.status)
            return True
        if isinstance(frame, RstStreamFrame):
            stream = self._streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.reset_status = frame.status
                stream.discard()
                stream._end_remote()
            return True
        if isinstance(frame, PingFrame):
            # Odd ids are the client's; an even one would be the echo of ours.
            if frame.ping_id % 2 == 1:
                with contextlib.suppress(StreamClosed):
                    await self.write(frame)
            return True
        if isinstance(frame, GoAwayFrame):
            self.peer_went_away = True
            return True
        if isinstance(frame, SettingsFrame | WindowUpdateFrame | HeadersFrame):
            return True
        if isinstance(frame, SynReplyFrame):
            return await self._protocol_error(f"SYN_REPLY for stream {frame.stream_id}, "
                                              "which the server never opened")
        return True

    async def _open(self, frame: SynStreamFrame) -> bool:
        stream_id = frame.stream_id
        if stream_id % 2 == 0:
            return await self._protocol_error(f"client opened even stream {stream_id}")
        if stream_id <= self._last_stream_id:
            return await self._protocol_error(
                f"stream {stream_id} opened after stream {self._last_stream_id}")
        self._last_stream_id = stream_id
        if self._went_away:
            await self._rst(stream_id, RstStatus.REFUSED_STREAM)
            return True
        if len(self._streams) >= self.max_streams:
            await self._rst(stream_id, RstStatus.REFUSED_STREAM)
            return True
        stream = SpdyStream(self, stream_id, frame.headers)
        self._streams[stream_id] = stream
        if frame.fin:
            stream._end_remote()
        with contextlib.suppress(StreamClosed):
            await self.write(SynReplyFrame(stream_id, {}))
        self._new_send.send_nowait(stream)
        return True

    def _forget_if_done(self, stream: SpdyStream) -> None:
        if stream.remote_closed and stream._local_done:
            self._streams.pop(stream.stream_id, None)

    async def _rst(self, stream_id: int, status: int) -> None:
        with contextlib.suppress(StreamClosed):
            await self.write(RstStreamFrame(stream_id, status))
