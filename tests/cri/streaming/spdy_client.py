"""A SPDY/3.1 client for the tests, speaking as client-go's executor and port forwarder do.

It upgrades with ``Upgrade: SPDY/3.1`` and ``X-Stream-Protocol-Version``, opens
streams with SYN_STREAM and waits for their SYN_REPLY (as spdystream's
``CreateStream``), reads until FIN, and answers nothing it is not asked.
Frames are built with the codec of ``runtime.plugins.cri.streaming.spdy``;
the codec's own tests check it against an independent zlib writer and reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from runtime.plugins.cri.streaming.spdy import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    PingFrame,
    RstStreamFrame,
    StreamError,
    SynReplyFrame,
    SynStreamFrame,
)


class UpgradeRefused(Exception):
    """The server answered the upgrade with an HTTP error."""

    def __init__(self, status: int, headers: dict[str, list[str]], body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()}")
        self.status, self.headers, self.body = status, headers, body


async def http_upgrade(url: str, headers: Iterable[tuple[str, str]], *,
                       method: str = "POST") -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                      int, dict[str, list[str]]]:
    """Send an upgrade request; returns the connection, the status and the headers."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Length: 0"]
    lines += [f"{name}: {value}" for name, value in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    status = int(status_line.split()[1])
    received: dict[str, list[str]] = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            received.setdefault(name.strip().lower(), []).append(value.strip())
    return reader, writer, status, received


class ClientStream:
    """A stream the client opened."""

    def __init__(self, client: SpdyClient, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id
        self.replied = asyncio.Event()
        self.data = bytearray()
        self.fin = asyncio.Event()
        self.reset_status: int | None = None
        self._readable = asyncio.Event()

    async def write(self, data: bytes) -> None:
        await self.client.send(DataFrame(self.stream_id, data))

    async def close(self) -> None:
        await self.client.send(DataFrame(self.stream_id, b"", fin=True))

    async def read_all(self, timeout: float = 30.0) -> bytes:
        """Everything until the server's FIN (or reset)."""
        await asyncio.wait_for(self.fin.wait(), timeout)
        return bytes(self.data)

    async def read_some(self, timeout: float = 30.0) -> bytes:
        """What arrived so far, waiting for something if nothing did; b"" at the end."""
        async def wait() -> None:
            while not self.data and not self.fin.is_set():
                self._readable.clear()
                await self._readable.wait()
        await asyncio.wait_for(wait(), timeout)
        out = bytes(self.data)
        self.data.clear()
        return out

    async def read_until(self, needle: bytes, timeout: float = 30.0) -> bytes:
        """Accumulate until ``needle`` appears; returns (and keeps) everything so far."""
        async def wait() -> None:
            while needle not in self.data:
                if self.fin.is_set():
                    raise AssertionError(f"stream ended without {needle!r}: {bytes(self.data)!r}")
                self._readable.clear()
                await self._readable.wait()
        await asyncio.wait_for(wait(), timeout)
        return bytes(self.data)

    def _received(self, frame: DataFrame) -> None:
        self.data += frame.data
        if frame.fin:
            self.fin.set()
        self._readable.set()


class SpdyClient:
    """One SPDY/3.1 connection to the streaming server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 protocol: str) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = protocol
        self.encoder = FrameEncoder()
        self.decoder = FrameDecoder()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.goaway: GoAwayFrame | None = None
        self.rst: list[RstStreamFrame] = []
        self.pings: list[int] = []
        self.closed = asyncio.Event()
        self._pump = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, url: str, protocols: Iterable[str] = (
            "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"),
            *, method: str = "POST", extra: Iterable[tuple[str, str]] = ()) -> SpdyClient:
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        headers += [("X-Stream-Protocol-Version", p) for p in protocols]
        headers += list(extra)
        reader, writer, status, received = await http_upgrade(url, headers, method=method)
        if status != 101:
            length = int(received.get("content-length", ["0"])[0])
            body = (await reader.readexactly(length)).decode() if length else ""
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            raise UpgradeRefused(status, received, body)
        return cls(reader, writer, received["x-stream-protocol-version"][0])

    async def send(self, frame: Frame) -> None:
        self.writer.write(self.encoder.encode(frame))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def open(self, headers: Mapping[str, str], *, wait_reply: bool = True,
                   timeout: float = 10.0) -> ClientStream:
        """SYN_STREAM with ``headers``; waits for the SYN_REPLY like spdystream."""
        stream = ClientStream(self, self.next_id)
        self.streams[stream.stream_id] = stream
        self.next_id += 2
        await self.send(SynStreamFrame(stream.stream_id, {k.lower(): [v] for k, v in
                                                          headers.items()}))
        if wait_reply:
            await asyncio.wait_for(stream.replied.wait(), timeout)
        return stream

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for frame in self.decoder.feed(data):
                    self._dispatch(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            for stream in self.streams.values():
                stream.fin.set()
                stream._readable.set()
            self.closed.set()

    def _dispatch(self, frame: Frame | StreamError) -> None:
        if isinstance(frame, SynReplyFrame):
            self.streams[frame.stream_id].replied.set()
        elif isinstance(frame, DataFrame):
            self.streams[frame.stream_id]._received(frame)
        elif isinstance(frame, RstStreamFrame):
            self.rst.append(frame)
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream.reset_status = frame.status
                stream.replied.set()
                stream.fin.set()
                stream._readable.set()
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, PingFrame):
            self.pings.append(frame.ping_id)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            self._pump.cancel()
            await self._pump


class RemoteCommand:
    """The client side of an exec or attach over SPDY, as client-go's v4 executor."""

    def __init__(self, client: SpdyClient, streams: dict[str, ClientStream]) -> None:
        self.client = client
        self.streams = streams

    @classmethod
    async def open(cls, url: str, *, stdin: bool = False, stdout: bool = True,
                   stderr: bool = True, tty: bool = False,
                   protocols: Iterable[str] = ("v4.channel.k8s.io", "v3.channel.k8s.io",
                                               "v2.channel.k8s.io", "channel.k8s.io"),
                   ) -> RemoteCommand:
        client = await SpdyClient.connect(url, protocols)
        streams = {"error": await client.open({"streamType": "error"})}
        if stdin:
            streams["stdin"] = await client.open({"streamType": "stdin"})
        if stdout:
            streams["stdout"] = await client.open({"streamType": "stdout"})
        if stderr and not tty:
            streams["stderr"] = await client.open({"streamType": "stderr"})
        if tty and client.protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            streams["resize"] = await client.open({"streamType": "resize"})
        return cls(client, streams)

    async def resize(self, width: int, height: int) -> None:
        await self.streams["resize"].write(json.dumps({"Width": width,
                                                       "Height": height}).encode())

    async def finish(self, timeout: float = 30.0) -> tuple[bytes, bytes, dict[str, Any] | str]:
        """Wait for stdout, stderr and the error stream to end; returns them (status decoded)."""
        out = await self.streams["stdout"].read_all(timeout) if "stdout" in self.streams else b""
        err = await self.streams["stderr"].read_all(timeout) if "stderr" in self.streams else b""
        raw = await self.streams["error"].read_all(timeout)
        await self.client.close()
        status: dict[str, Any] | str = raw.decode()
        if self.client.protocol == "v4.channel.k8s.io" and raw:
            status = json.loads(raw)
        return out, err, status


def exit_code(status: dict[str, Any] | str) -> int:
    """The exit code in a v4 Status, as client-go reads it (0 for Success)."""
    assert isinstance(status, dict), status
    if status["status"] == "Success":
        return 0
    assert status["reason"] == "NonZeroExitCode", status
    (cause,) = [c for c in status["details"]["causes"] if c["reason"] == "ExitCode"]
    return int(cause["message"])
