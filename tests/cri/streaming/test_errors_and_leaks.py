"""Bad requests get clear errors and the daemon stays up; finished streams leave nothing."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

import aiohttp
import pytest

from tests.cri.streaming.host_servers import echo_listener, host_server
from tests.cri.streaming.spdy_client import (
    RemoteCommand,
    SpdyClient,
    UpgradeRefused,
    exit_code,
    http_upgrade,
)


@pytest.fixture
def container(cri: Any, cri_image: str) -> str:
    _, container_id = cri.run_container(cri_image)
    return container_id


def exec_url(cri: Any, container: str, cmd: list[str]) -> str:
    return str(cri.runtime.Exec(cri.pb.ExecRequest(container_id=container, cmd=cmd,
                                                   stdout=True, stderr=True)).url)


async def still_serves(cri: Any, container: str) -> None:
    command = await RemoteCommand.open(exec_url(cri, container, ["true"]))
    assert exit_code((await command.finish())[2]) == 0


async def test_unknown_and_reused_tokens_get_404(cri: Any, container: str) -> None:
    url = exec_url(cri, container, ["true"])
    base = url.rsplit("/", 1)[0]
    with pytest.raises(UpgradeRefused) as refused:
        await SpdyClient.connect(base + "/not-a-token")
    assert refused.value.status == 404 and "unknown, used or expired" in refused.value.body
    command = await RemoteCommand.open(url)
    await command.finish()
    with pytest.raises(UpgradeRefused) as reused:
        await SpdyClient.connect(url)
    assert reused.value.status == 404
    # An exec token is no attach token (and is spent by the attempt).
    other = exec_url(cri, container, ["true"])
    with pytest.raises(UpgradeRefused) as wrong_path:
        await SpdyClient.connect(other.replace("/exec/", "/attach/"))
    assert wrong_path.value.status == 404
    await still_serves(cri, container)


async def test_expired_token_gets_404() -> None:
    # A server of its own with a short token life; expiry is checked before any runtime call.
    from runtime.plugins.cri.streaming import StreamingServer

    server = StreamingServer(namespace="k8s.io", runtime=None,  # type: ignore[arg-type]
                             netns_path=lambda sandbox: None, token_ttl=0.3)
    await server.start()
    try:
        url = server.exec_url("c1", ["true"], stdout=True)
        await asyncio.sleep(0.5)
        with pytest.raises(UpgradeRefused) as expired:
            await SpdyClient.connect(url)
        assert expired.value.status == 404
    finally:
        await server.stop()


async def test_host_network_port_forward_dials_the_hosts_localhost() -> None:
    async with echo_listener() as port, host_server() as server:
        client = await SpdyClient.connect(server.portforward_url("pod", [port]),
                                          ["portforward.k8s.io"])
        headers = {"port": str(port), "requestID": "0"}
        error = await client.open({"streamType": "error", **headers})
        data = await client.open({"streamType": "data", **headers})
        payload = os.urandom(1 << 20)
        await data.write(payload)
        await data.close()
        assert await data.read_all() == payload
        assert await error.read_all() == b""
        await client.close()


async def test_wrong_subprotocols_are_refused(cri: Any, container: str) -> None:
    with pytest.raises(UpgradeRefused) as spdy:
        await SpdyClient.connect(exec_url(cri, container, ["true"]), ["v9.channel.k8s.io"])
    assert spdy.value.status == 403 and "unable to negotiate protocol" in spdy.value.body
    assert spdy.value.headers["x-accepted-stream-protocol-versions"][0] == "v4.channel.k8s.io"
    with pytest.raises(UpgradeRefused) as missing:
        await SpdyClient.connect(exec_url(cri, container, ["true"]), [])
    assert missing.value.status == 400 and "X-Stream-Protocol-Version" in missing.value.body
    url = exec_url(cri, container, ["true"]).replace("http://", "ws://")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as ws:
            await http.ws_connect(url, protocols=("v9.channel.k8s.io",))
        assert ws.value.status == 400
    _, writer, status, _ = await http_upgrade(exec_url(cri, container, ["true"]), [])
    writer.close()
    await writer.wait_closed()
    assert status == 400
    await still_serves(cri, container)


async def test_garbage_frames_end_that_session_with_goaway(cri: Any, container: str) -> None:
    client = await SpdyClient.connect(exec_url(cri, container, ["sleep", "100"]))
    await client.send_raw(struct.pack(">HHI", 0x8003, 1, 12) + b"not a header")
    await asyncio.wait_for(client.closed.wait(), 15)
    assert client.goaway is not None and client.goaway.status == 1  # PROTOCOL_ERROR
    await client.close()
    client = await SpdyClient.connect(exec_url(cri, container, ["sleep", "100"]))
    await client.send_raw(random.Random(17).randbytes(4096))
    await asyncio.wait_for(client.closed.wait(), 15)
    await client.close()
    await still_serves(cri, container)


def daemon_usage(daemon: Any) -> tuple[int, int, int]:
    """The daemon's open fds and threads (from /proc) and its asyncio tasks (from its metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    pid = daemon.proc.pid
    response = daemon.client().open("GET", "/v1/metrics")
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    tasks = int(families["moorage_process_async_tasks"].samples[0].value)
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")), tasks


async def test_200_sequential_exec_streams_leave_nothing_behind(
        cri_daemon: Any, cri: Any, container: str) -> None:
    for _ in range(10):  # warm up: worker threads, caches
        await still_serves(cri, container)
    await asyncio.sleep(1)
    fds_before, threads_before, tasks_before = daemon_usage(cri_daemon)
    for i in range(200):
        command = await RemoteCommand.open(exec_url(cri, container,
                                                    ["sh", "-c", f"echo {i}; exit {i % 4}"]))
        out, _, status = await command.finish()
        assert out == f"{i}\n".encode() and exit_code(status) == i % 4
    await asyncio.sleep(1)
    fds_after, threads_after, tasks_after = daemon_usage(cri_daemon)
    print(f"daemon fds {fds_before} -> {fds_after}, threads {threads_before} -> "
          f"{threads_after}, asyncio tasks {tasks_before} -> {tasks_after}")
    assert fds_after <= fds_before + 2
    assert threads_after <= threads_before + 2
    # Every session's tasks (reader, command, hang-up wait) ended with it.
    assert tasks_after <= tasks_before + 2
    # Every exec process was deleted: the task holds none.
    execs = cri.runtime.ContainerStatus(cri.pb.ContainerStatusRequest(container_id=container))
    assert execs.status.state == cri.pb.CONTAINER_RUNNING
