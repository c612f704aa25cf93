"""Attach over SPDY, and exec/attach over websocket with aiohttp's client."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.cri.streaming.spdy_client import RemoteCommand, exit_code


async def test_attach_reads_output_and_writes_stdin(cri: Any, cri_image: str) -> None:
    _, container = cri.run_container(cri_image, ["sh"], stdin=True, stdin_once=True)
    url = cri.runtime.Attach(cri.pb.AttachRequest(container_id=container, stdin=True,
                                                  stdout=True, stderr=True)).url
    command = await RemoteCommand.open(url, stdin=True)
    await command.streams["stdin"].write(b"echo attached; echo oops >&2\n")
    await command.streams["stdout"].read_until(b"attached\n")
    await command.streams["stderr"].read_until(b"oops\n")
    # stdin_once: closing stdin ends the shell, which ends the attach.
    await command.streams["stdin"].close()
    out, err, status = await command.finish()
    assert (out, err) == (b"attached\n", b"oops\n")
    assert exit_code(status) == 0


async def ws_exec(url: str, protocol: str, stdin: bytes | None = None,
                  close_stdin: bool = False) -> tuple[bytes, bytes, bytes, str | None]:
    out, err, error = b"", b"", b""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url.replace("http://", "ws://"), protocols=(protocol,)) as ws:
        chosen = ws.protocol
        if stdin is not None:
            await ws.send_bytes(b"\x00" + stdin)
            if close_stdin:
                await ws.send_bytes(b"\xff\x00")
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.BINARY
            channel, data = message.data[0], message.data[1:]
            if channel == 1:
                out += data
            elif channel == 2:
                err += data
            elif channel == 3:
                error += data
    return out, err, error, chosen


async def test_websocket_v5_exec_with_stdin_close_signal(cri: Any, cri_image: str) -> None:
    _, container = cri.run_container(cri_image)
    url = cri.runtime.Exec(cri.pb.ExecRequest(
        container_id=container, cmd=["sh", "-c", "cat; echo err >&2; exit 3"], stdin=True,
        stdout=True, stderr=True)).url
    out, err, error, chosen = await ws_exec(url, "v5.channel.k8s.io", b"hello\n",
                                            close_stdin=True)
    assert chosen == "v5.channel.k8s.io"
    assert (out, err) == (b"hello\n", b"err\n")
    assert exit_code(json.loads(error)) == 3


async def test_websocket_v4_and_v1_exec(cri: Any, cri_image: str) -> None:
    _, container = cri.run_container(cri_image)
    for protocol in ("v4.channel.k8s.io", "channel.k8s.io"):
        url = cri.runtime.Exec(cri.pb.ExecRequest(
            container_id=container, cmd=["sh", "-c", "echo out; exit 2"], stdout=True,
            stderr=True)).url
        out, _, error, chosen = await ws_exec(url, protocol)
        assert (chosen, out) == (protocol, b"out\n")
        if protocol.startswith("v4"):
            assert exit_code(json.loads(error)) == 2
        else:
            assert error == b"command terminated with non-zero exit code: exit status 2"


async def test_attach_with_tty_follows_resize(cri: Any, cri_image: str) -> None:
    _, container = cri.run_container(cri_image, ["sh"], stdin=True, stdin_once=True, tty=True)
    url = cri.runtime.Attach(cri.pb.AttachRequest(container_id=container, stdin=True,
                                                  stdout=True, tty=True)).url
    command = await RemoteCommand.open(url, stdin=True, tty=True)
    await command.resize(91, 33)
    await command.streams["stdin"].write(b"stty size\n")
    await command.streams["stdout"].read_until(b"33 91")
    await command.streams["stdin"].write(b"exit\n")
    _, _, status = await command.finish()
    assert exit_code(status) == 0


async def test_websocket_base64_exec(cri: Any, cri_image: str) -> None:
    import base64

    _, container = cri.run_container(cri_image)
    url = cri.runtime.Exec(cri.pb.ExecRequest(
        container_id=container, cmd=["sh", "-c", "echo out; exit 4"], stdout=True,
        stderr=True)).url
    out, error = b"", b""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url.replace("http://", "ws://"), protocols=("v4.base64.channel.k8s.io",)) as ws:
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT
            channel, data = message.data[0], base64.b64decode(message.data[1:])
            if channel == "1":
                out += data
            elif channel == "3":
                error += data
    assert out == b"out\n"
    assert exit_code(json.loads(error)) == 4
