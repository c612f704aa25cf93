"""Servers for streaming tests that need no daemon: an echo listener, a host-network server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def echo_listener() -> AsyncIterator[int]:
    """An echo server on the host's 127.0.0.1; yields its port."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()


@asynccontextmanager
async def host_server() -> AsyncIterator[Any]:
    """A streaming server of its own whose pods are all host-network."""
    from runtime.plugins.cri.streaming import StreamingServer

    server = StreamingServer(namespace="k8s.io", runtime=None,  # type: ignore[arg-type]
                             netns_path=lambda sandbox: None)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
