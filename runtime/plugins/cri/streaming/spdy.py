"""SPDY/3.1 framing, the subset Kubernetes streaming speaks; no I/O here.

Kubernetes clients (crictl, the kubelet, client-go's SPDY executor and port
forwarder) multiplex exec, attach and port-forward streams over SPDY/3.1 as
spdystream speaks it: SYN_STREAM/SYN_REPLY open streams, DATA carries their
bytes (a FIN flag half-closes one direction), RST_STREAM aborts one, PING is
echoed, GOAWAY ends the session, SETTINGS and WINDOW_UPDATE are sent but
carry nothing the streams depend on (spdystream keeps no flow-control
windows, so neither side may wait for one).

Header blocks are zlib streams primed with the SPDY/3 dictionary; each
direction keeps ONE compression context for the whole session, so every
header block must go through the decoder in arrival order, even the block of
a stream that is refused, and the encoder's output must be written in the
order it was produced.

:class:`FrameDecoder` turns received bytes into frames; :class:`FrameEncoder`
turns frames into bytes. DATA payloads are handed out as they arrive (a frame
may be split over several :class:`DataFrame` results, only the last carrying
its FIN), so a large DATA frame is never buffered whole; control frames are
buffered up to ``max_control_frame`` bytes and their header blocks inflate to
at most ``max_header_block`` bytes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from runtime.plugins.cri.streaming.spdy_headers import (
    HEADER_DICTIONARY,
    Headers,
    decode_headers,
    encode_headers,
)

__all__ = [
    "DEFAULT_MAX_CONTROL_FRAME",
    "DEFAULT_MAX_HEADER_BLOCK",
    "FLAG_FIN",
    "FLAG_UNIDIRECTIONAL",
    "HEADER_DICTIONARY",
    "MAX_FRAME_LENGTH",
    "VERSION",
    "DataFrame",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "GoAwayFrame",
    "GoAwayStatus",
    "Headers",
    "HeadersFrame",
    "PingFrame",
    "RstStatus",
    "RstStreamFrame",
    "SessionError",
    "SettingsFrame",
    "StreamError",
    "SynReplyFrame",
    "SynStreamFrame",
    "WindowUpdateFrame",
]

VERSION = 3
#: The 24-bit length field's limit.
MAX_FRAME_LENGTH = 0xFFFFFF
DEFAULT_MAX_CONTROL_FRAME = 64 * 1024
DEFAULT_MAX_HEADER_BLOCK = 64 * 1024

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
_FLAG_SETTINGS_CLEAR = 0x01

_SYN_STREAM = 1
_SYN_REPLY = 2
_RST_STREAM = 3
_SETTINGS = 4
_PING = 6
_GOAWAY = 7
_HEADERS = 8
_WINDOW_UPDATE = 9

_STREAM_ID_MASK = 0x7FFFFFFF
_CONTROL_BIT = 0x80000000


class RstStatus(IntEnum):
    """RST_STREAM status codes."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    """GOAWAY status codes."""

    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@dataclass(frozen=True, slots=True)
class DataFrame:
    """Bytes of a stream; ``fin``: the sender will send no more on it."""

    stream_id: int
    data: bytes = b""
    fin: bool = False


@dataclass(frozen=True, slots=True)
class SynStreamFrame:
    """Opens a stream (client streams have odd ids)."""

    stream_id: int
    headers: Headers = field(default_factory=dict)
    associated_to: int = 0
    priority: int = 0
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReplyFrame:
    """Accepts a stream the peer opened."""

    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    """More headers for an open stream."""

    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    """Aborts a stream in both directions."""

    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    """``(id, flags, value)`` entries; ``clear``: forget persisted settings."""

    entries: tuple[tuple[int, int, int], ...] = ()
    clear: bool = False


@dataclass(frozen=True, slots=True)
class PingFrame:
    """Echoed back unchanged by the receiver when the sender is the peer."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    """The sender opens no more streams; streams above ``last_good_stream_id`` were ignored."""

    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    """Flow-control credit; received and ignored (see the module documentation)."""

    stream_id: int
    delta: int


Frame = (DataFrame | SynStreamFrame | SynReplyFrame | HeadersFrame | RstStreamFrame
         | SettingsFrame | PingFrame | GoAwayFrame | WindowUpdateFrame)


class SessionError(Exception):
    """The byte stream cannot be decoded any further; answer GOAWAY and close.

    Attributes:
        status: The GOAWAY status to send.
    """

    def __init__(self, message: str, status: int = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class StreamError:
    """A decoded frame that is wrong for one stream only; answer RST_STREAM ``status``."""

    stream_id: int
    status: int
    message: str


class FrameDecoder:
    """Received bytes in, frames (and per-stream errors) out.

    Args:
        max_control_frame: Largest control frame payload accepted.
        max_header_block: Largest inflated header block accepted.
    """

    def __init__(self, *, max_control_frame: int = DEFAULT_MAX_CONTROL_FRAME,
                 max_header_block: int = DEFAULT_MAX_HEADER_BLOCK) -> None:
        self.max_control_frame = max_control_frame
        self.max_header_block = max_header_block
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        # The DATA frame whose payload is being passed through.
        self._data_stream = 0
        self._data_left = 0
        self._data_fin = False
        self._failed: SessionError | None = None

    def feed(self, data: bytes) -> list[Frame | StreamError]:
        """Decode ``data``; frames completed by it come back in order.

        Raises:
            SessionError: The bytes are not SPDY/3 or break a limit; the
                decoder refuses everything after that.
        """
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        out: list[Frame | StreamError] = []
        try:
            while self._step(out):
                pass
        except SessionError as exc:
            self._failed = exc
            raise
        return out

    def _step(self, out: list[Frame | StreamError]) -> bool:
        buffer = self._buffer
        if self._data_left:
            if not buffer:
                return False
            chunk = bytes(buffer[:self._data_left])
            del buffer[:len(chunk)]
            self._data_left -= len(chunk)
            out.append(DataFrame(self._data_stream, chunk,
                                 self._data_fin and not self._data_left))
            return True
        if len(buffer) < 8:
            return False
        first, second = struct.unpack_from(">II", buffer)
        flags, length = second >> 24, second & MAX_FRAME_LENGTH
        if not first & _CONTROL_BIT:
            stream_id = first & _STREAM_ID_MASK
            if stream_id == 0:
                raise SessionError("DATA frame on stream 0")
            del buffer[:8]
            if length == 0:
                out.append(DataFrame(stream_id, b"", bool(flags & FLAG_FIN)))
            else:
                self._data_stream, self._data_left = stream_id, length
                self._data_fin = bool(flags & FLAG_FIN)
            return True
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SessionError(f"SPDY version {version} is not supported (only {VERSION})")
        if length > self.max_control_frame:
            raise SessionError(f"control frame of {length} bytes is larger than the "
                               f"{self.max_control_frame} allowed")
        if len(buffer) < 8 + length:
            return False
        payload = bytes(buffer[8:8 + length])
        del buffer[:8 + length]
        frame = self._control(kind, flags, payload)
        if frame is not None:
            out.append(frame)
        return True

    def _control(self, kind: int, flags: int, payload: bytes) -> Frame | StreamError | None:
        fin = bool(flags & FLAG_FIN)
        if kind == _SYN_STREAM:
            self._need(payload, 10, "SYN_STREAM", exact=False)
            stream_id, associated = struct.unpack_from(">II", payload)
            stream_id &= _STREAM_ID_MASK
            headers = self._headers(payload[10:], stream_id)
            if stream_id == 0:
                raise SessionError("SYN_STREAM for stream 0")
            if isinstance(headers, StreamError):
                return headers
            return SynStreamFrame(stream_id, headers, associated & _STREAM_ID_MASK,
                                  payload[8] >> 5, payload[9], fin,
                                  bool(flags & FLAG_UNIDIRECTIONAL))
        if kind in (_SYN_REPLY, _HEADERS):
            name = "SYN_REPLY" if kind == _SYN_REPLY else "HEADERS"
            self._need(payload, 4, name, exact=False)
            stream_id = struct.unpack_from(">I", payload)[0] & _STREAM_ID_MASK
            headers = self._headers(payload[4:], stream_id)
            if stream_id == 0:
                raise SessionError(f"{name} for stream 0")
            if isinstance(headers, StreamError):
                return headers
            cls = SynReplyFrame if kind == _SYN_REPLY else HeadersFrame
            return cls(stream_id, headers, fin)
        if kind == _RST_STREAM:
            self._need(payload, 8, "RST_STREAM")
            stream_id, status = struct.unpack(">II", payload)
            stream_id &= _STREAM_ID_MASK
            if stream_id == 0 or status == 0:
                raise SessionError("RST_STREAM with stream 0 or status 0")
            return RstStreamFrame(stream_id, status)
        if kind == _SETTINGS:
            self._need(payload, 4, "SETTINGS", exact=False)
            (count,) = struct.unpack_from(">I", payload)
            if len(payload) != 4 + 8 * count:
                raise SessionError(f"SETTINGS of {len(payload)} bytes claims {count} entries")
            entries = []
            for i in range(count):
                word, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                entries.append((word & 0xFFFFFF, word >> 24, value))
            return SettingsFrame(tuple(entries), bool(flags & _FLAG_SETTINGS_CLEAR))
        if kind == _PING:
            self._need(payload, 4, "PING")
            return PingFrame(struct.unpack(">I", payload)[0])
        if kind == _GOAWAY:
            # SPDY/2 peers send no status; take the id alone too.
            if len(payload) not in (4, 8):
                raise SessionError(f"GOAWAY of {len(payload)} bytes")
            last = struct.unpack_from(">I", payload)[0] & _STREAM_ID_MASK
            status = struct.unpack_from(">I", payload, 4)[0] if len(payload) == 8 else 0
            return GoAwayFrame(last, status)
        if kind == _WINDOW_UPDATE:
            self._need(payload, 8, "WINDOW_UPDATE")
            stream_id, delta = struct.unpack(">II", payload)
            return WindowUpdateFrame(stream_id & _STREAM_ID_MASK, delta & _STREAM_ID_MASK)
        # NOOP, CREDENTIAL and types yet unknown: the spec says ignore them.
        return None

    @staticmethod
    def _need(payload: bytes, size: int, name: str, *, exact: bool = True) -> None:
        if len(payload) < size or (exact and len(payload) != size):
            raise SessionError(f"{name} frame of {len(payload)} bytes")

    def _headers(self, block: bytes, stream_id: int) -> Headers | StreamError:
        # Inflating is never skipped: the context spans every block of the session.
        # Each block ends at a sync flush; one that does not would leave the
        # inflater mid-stream and every later block unreadable.
        if not block.endswith(b"\x00\x00\xff\xff"):
            raise SessionError("header block does not end at a zlib sync flush")
        try:
            inflated = self._inflate.decompress(block, self.max_header_block + 1)
        except zlib.error as exc:
            raise SessionError(f"header block does not inflate: {exc}") from None
        if len(inflated) > self.max_header_block or self._inflate.unconsumed_tail:
            raise SessionError(f"header block inflates beyond {self.max_header_block} bytes")
        try:
            return decode_headers(inflated)
        except ValueError as exc:
            return StreamError(stream_id, RstStatus.PROTOCOL_ERROR, f"bad header block: {exc}")


class FrameEncoder:
    """Frames in, bytes out; one deflate context for every header block sent.

    Args:
        level: zlib level of header blocks.
    """

    def __init__(self, level: int = 6) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                         HEADER_DICTIONARY)

    def encode(self, frame: Frame) -> bytes:
        """The bytes of ``frame``; ValueError for a payload beyond 24 bits of length."""
        if isinstance(frame, DataFrame):
            return self._frame(frame.stream_id & _STREAM_ID_MASK,
                               FLAG_FIN if frame.fin else 0, frame.data)
        if isinstance(frame, SynStreamFrame):
            flags = (FLAG_FIN if frame.fin else 0) | (
                FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            body = struct.pack(">IIBB", frame.stream_id & _STREAM_ID_MASK,
                               frame.associated_to & _STREAM_ID_MASK,
                               (frame.priority & 0x7) << 5, frame.slot & 0xFF)
            return self._control(_SYN_STREAM, flags, body + self._block(frame.headers))
        if isinstance(frame, SynReplyFrame | HeadersFrame):
            kind = _SYN_REPLY if isinstance(frame, SynReplyFrame) else _HEADERS
            body = struct.pack(">I", frame.stream_id & _STREAM_ID_MASK)
            return self._control(kind, FLAG_FIN if frame.fin else 0,
                                 body + self._block(frame.headers))
        if isinstance(frame, RstStreamFrame):
            return self._control(_RST_STREAM, 0, struct.pack(
                ">II", frame.stream_id & _STREAM_ID_MASK, frame.status))
        if isinstance(frame, SettingsFrame):
            body = struct.pack(">I", len(frame.entries)) + b"".join(
                struct.pack(">II", (flags << 24) | (key & 0xFFFFFF), value)
                for key, flags, value in frame.entries)
            return self._control(_SETTINGS, _FLAG_SETTINGS_CLEAR if frame.clear else 0, body)
        if isinstance(frame, PingFrame):
            return self._control(_PING, 0, struct.pack(">I", frame.ping_id))
        if isinstance(frame, GoAwayFrame):
            return self._control(_GOAWAY, 0, struct.pack(
                ">II", frame.last_good_stream_id & _STREAM_ID_MASK, frame.status))
        return self._control(_WINDOW_UPDATE, 0, struct.pack(
            ">II", frame.stream_id & _STREAM_ID_MASK, frame.delta & _STREAM_ID_MASK))

    def _block(self, headers: Headers) -> bytes:
        raw = encode_headers(headers)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _frame(first: int, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_FRAME_LENGTH:
            raise ValueError(f"frame payload of {len(payload)} bytes exceeds 24 bits")
        return struct.pack(">II", first, (flags << 24) | len(payload)) + payload

    def _control(self, kind: int, flags: int, payload: bytes) -> bytes:
        return self._frame(_CONTROL_BIT | (VERSION << 16) | kind, flags, payload)
