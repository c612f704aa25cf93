"""SPDY/3.1 framing: what the streaming server decodes and encodes, frame by frame."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from runtime.plugins.cri.streaming.spdy import (
    HEADER_DICTIONARY,
    DataFrame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    GoAwayStatus,
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


def control(kind: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(payload)) + payload


def raw_block(pairs: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    out = struct.pack(">I", len(pairs) if count is None else count)
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def deflater() -> zlib._Compress:
    return zlib.compressobj(6, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)


def compressed(compressor: zlib._Compress, block: bytes) -> bytes:
    return compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)


def test_header_dictionary_is_the_spdy3_one() -> None:
    # The 1423 bytes of the SPDY/3 draft (also in spdystream's dictionary.go).
    assert len(HEADER_DICTIONARY) == 1423
    assert zlib.adler32(HEADER_DICTIONARY) == 3821447106
    assert hashlib.sha256(HEADER_DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")


@pytest.mark.parametrize("frame", [
    DataFrame(1, b"hello", fin=False),
    DataFrame(3, b"", fin=True),
    SynStreamFrame(5, {"streamtype": ["stdout"], "x": ["a", "b"]}, associated_to=0,
                   priority=7, slot=0, fin=False),
    SynStreamFrame(7, {}, fin=True, unidirectional=True),
    SynReplyFrame(5, {}),
    SynReplyFrame(9, {"status": ["200"]}, fin=True),
    HeadersFrame(5, {"trailer": ["x"]}),
    RstStreamFrame(5, RstStatus.CANCEL),
    SettingsFrame(((4, 0, 100), (7, 1, 65536)), clear=True),
    PingFrame(0x7FFFFFFF),
    GoAwayFrame(11, GoAwayStatus.INTERNAL_ERROR),
    WindowUpdateFrame(5, 65536),
])
def test_every_frame_round_trips(frame: object) -> None:
    encoded = FrameEncoder().encode(frame)  # type: ignore[arg-type]
    assert FrameDecoder().feed(encoded) == [frame]


def test_frames_split_at_every_byte_decode_the_same() -> None:
    encoder = FrameEncoder()
    frames = [SynStreamFrame(1, {"streamtype": ["error"]}), DataFrame(1, b"abc", fin=True),
              PingFrame(2), SynStreamFrame(3, {"streamtype": ["stdin"]})]
    wire = b"".join(encoder.encode(f) for f in frames)
    decoder = FrameDecoder()
    out = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i:i + 1])
    # DATA comes out byte by byte; only the last piece carries FIN.
    data = [f for f in out if isinstance(f, DataFrame)]
    assert b"".join(f.data for f in data) == b"abc"
    assert [f.fin for f in data] == [False, False, True]
    assert [f for f in out if not isinstance(f, DataFrame)] == [
        frames[0], frames[2], frames[3]]


def test_large_data_frame_is_passed_through_without_buffering_it_whole() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, larger than any control-frame limit
    wire = FrameEncoder().encode(DataFrame(1, payload, fin=True))
    decoder = FrameDecoder(max_control_frame=1024)
    pieces = []
    for i in range(0, len(wire), 65536):
        pieces += decoder.feed(wire[i:i + 65536])
    assert all(len(p.data) <= 65536 for p in pieces)  # type: ignore[union-attr]
    assert b"".join(p.data for p in pieces) == payload  # type: ignore[union-attr]
    assert pieces[-1].fin and not any(p.fin for p in pieces[:-1])  # type: ignore[union-attr]


def test_compression_context_is_kept_across_frames() -> None:
    # The second block refers back to the first: a fresh context cannot read it.
    encoder = FrameEncoder()
    first = encoder.encode(SynStreamFrame(1, {"streamtype": ["error"], "port": ["8080"]}))
    second = encoder.encode(SynStreamFrame(3, {"streamtype": ["error"], "port": ["8080"]}))
    decoder = FrameDecoder()
    assert decoder.feed(first + second) == [
        SynStreamFrame(1, {"streamtype": ["error"], "port": ["8080"]}),
        SynStreamFrame(3, {"streamtype": ["error"], "port": ["8080"]})]
    assert len(second) < len(first)
    with pytest.raises(SessionError, match="inflate"):
        FrameDecoder().feed(second)


def test_decoder_reads_blocks_of_an_independent_zlib_writer() -> None:
    # As Go's compress/zlib writes them: one stream, a sync flush per block.
    z = deflater()
    frames = b""
    for stream_id, kind in ((1, b"error"), (3, b"stdout"), (5, b"stderr")):
        block = compressed(z, raw_block([(b"streamtype", kind)]))
        frames += control(1, struct.pack(">IIBB", stream_id, 0, 0, 0) + block)
    out = FrameDecoder().feed(frames)
    assert [(f.stream_id, f.headers) for f in out] == [  # type: ignore[union-attr]
        (1, {"streamtype": ["error"]}), (3, {"streamtype": ["stdout"]}),
        (5, {"streamtype": ["stderr"]})]


def test_encoder_blocks_inflate_with_an_independent_zlib_reader() -> None:
    encoder = FrameEncoder()
    inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
    for stream_id in (1, 3, 5):
        wire = encoder.encode(SynReplyFrame(stream_id, {"a": ["1"]}))
        assert struct.unpack(">HHI", wire[:8])[:2] == (0x8003, 2)
        assert struct.unpack(">I", wire[8:12])[0] == stream_id
        assert inflate.decompress(wire[12:]) == raw_block([(b"a", b"1")])


def test_header_names_arrive_lower_case_and_values_split_on_nul() -> None:
    z = deflater()
    block = compressed(z, raw_block([(b"StreamType", b"data"), (b"port", b"80\x00443")]))
    (frame,) = FrameDecoder().feed(control(1, struct.pack(">IIBB", 1, 0, 0, 0) + block))
    assert frame == SynStreamFrame(1, {"streamtype": ["data"], "port": ["80", "443"]})


def test_oversized_header_block_ends_the_session() -> None:
    z = deflater()
    # 200 KiB of zeros deflate to a few hundred bytes: a small frame, a big block.
    block = compressed(z, raw_block([(b"x", b"\0" * 200_000)]))
    frame = control(1, struct.pack(">IIBB", 1, 0, 0, 0) + block)
    assert len(frame) < 2048
    with pytest.raises(SessionError, match="beyond 65536"):
        FrameDecoder().feed(frame)


def test_oversized_control_frame_ends_the_session_before_it_is_buffered() -> None:
    header = struct.pack(">HHI", 0x8003, 1, 1 << 20)
    decoder = FrameDecoder()
    with pytest.raises(SessionError, match="larger than"):
        decoder.feed(header)
    with pytest.raises(SessionError):
        decoder.feed(b"more")  # a failed decoder stays failed


@pytest.mark.parametrize(("wire", "match"), [
    (control(6, b"\0\0\0\1", version=2), "version 2"),
    (control(6, b"\0\0\0\1\0"), "PING frame of 5 bytes"),
    (control(3, struct.pack(">II", 1, 0)), "status 0"),
    (control(3, struct.pack(">I", 1)), "RST_STREAM frame of 4 bytes"),
    (control(4, struct.pack(">III", 2, 1, 1)), "claims 2 entries"),
    (control(7, b"\0\0"), "GOAWAY of 2 bytes"),
    (control(9, b"\0\0\0\1"), "WINDOW_UPDATE frame of 4 bytes"),
    (control(1, b"\0\0\0\1\0\0"), "SYN_STREAM frame of 6 bytes"),
    (control(1, struct.pack(">IIBB", 1, 0, 0, 0) + b"not zlib at all"), "sync flush"),
    (control(1, struct.pack(">IIBB", 1, 0, 0, 0) + b"not zlib\0\0\xff\xff"), "inflate"),
    (struct.pack(">II", 0, 3) + b"abc", "stream 0"),
])
def test_malformed_frames_end_the_session(wire: bytes, match: str) -> None:
    with pytest.raises(SessionError, match=match):
        FrameDecoder().feed(wire)


@pytest.mark.parametrize(("pairs", "count", "match"), [
    ([(b"a", b"1"), (b"a", b"2")], None, "duplicate"),
    ([(b"", b"1")], None, "empty header name"),
    ([(b"a", b"1")], 2, "claims 2 pairs"),
])
def test_bad_header_block_refuses_that_stream_only(
        pairs: list[tuple[bytes, bytes]], count: int | None, match: str) -> None:
    z = deflater()
    bad = control(1, struct.pack(">IIBB", 1, 0, 0, 0) + compressed(z, raw_block(pairs, count)))
    good = control(1, struct.pack(">IIBB", 3, 0, 0, 0) + compressed(
        z, raw_block([(b"streamtype", b"error")])))
    error, frame = FrameDecoder().feed(bad + good)
    assert isinstance(error, StreamError) and error.stream_id == 1
    assert error.status == RstStatus.PROTOCOL_ERROR and match in error.message
    # The context survived the refused block: the next stream decodes.
    assert frame == SynStreamFrame(3, {"streamtype": ["error"]})


def test_truncated_header_block_refuses_the_stream() -> None:
    z = deflater()
    block = raw_block([(b"streamtype", b"stdout")])[:-3]
    (error,) = FrameDecoder().feed(
        control(1, struct.pack(">IIBB", 1, 0, 0, 0) + compressed(z, block)))
    assert isinstance(error, StreamError) and "truncated" in error.message


def test_unknown_control_frames_are_ignored() -> None:
    # NOOP (5, SPDY/2) and CREDENTIAL (10): skipped, the next frame decodes.
    wire = control(5, b"") + control(10, b"\0" * 12) + control(6, b"\0\0\0\7")
    assert FrameDecoder().feed(wire) == [PingFrame(7)]


def test_encoder_refuses_payloads_beyond_24_bits() -> None:
    with pytest.raises(ValueError, match="24 bits"):
        FrameEncoder().encode(DataFrame(1, b"\0" * (1 << 24)))
