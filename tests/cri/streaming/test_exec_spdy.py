"""Exec over SPDY/3.1 through the URL the CRI Exec call returns, against a real daemon."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.cri.streaming.spdy_client import RemoteCommand, exit_code


def exec_url(cri: Any, container_id: str, cmd: list[str], **flags: bool) -> str:
    response = cri.runtime.Exec(cri.pb.ExecRequest(container_id=container_id, cmd=cmd, **flags))
    return str(response.url)


def processes(cri: Any, container_id: str) -> str:
    return str(cri.exec(container_id, "ps", "-o", "args").stdout.decode())


@pytest.fixture
def container(cri: Any, cri_image: str) -> str:
    _, container_id = cri.run_container(cri_image)
    return container_id


async def test_exec_returns_stdout_stderr_and_exit_code(cri: Any, container: str) -> None:
    url = exec_url(cri, container, ["sh", "-c", "echo out; echo err >&2; exit 3"],
                   stdout=True, stderr=True)
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    command = await RemoteCommand.open(url)
    assert command.client.protocol == "v4.channel.k8s.io"
    out, err, status = await command.finish()
    assert (out, err) == (b"out\n", b"err\n")
    assert exit_code(status) == 3
    assert status["message"].startswith("command terminated with non-zero exit code")


async def test_exec_that_succeeds_reports_success(cri: Any, container: str) -> None:
    command = await RemoteCommand.open(exec_url(cri, container, ["echo", "hi"], stdout=True),
                                       stderr=False)
    out, _, status = await command.finish()
    assert out == b"hi\n"
    assert status == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Success"}


async def test_exec_reads_stdin_until_the_client_closes_it(cri: Any, container: str) -> None:
    # 3 MiB: more than the server buffers per stream, so TCP has to push back.
    payload = bytes(range(256)) * (3 * 4096)
    url = exec_url(cri, container, ["sh", "-c", "wc -c; echo done >&2"], stdin=True,
                   stdout=True, stderr=True)
    command = await RemoteCommand.open(url, stdin=True)
    stdin = command.streams["stdin"]
    for start in range(0, len(payload), 32768):
        await stdin.write(payload[start:start + 32768])
    await stdin.close()
    out, err, status = await command.finish()
    assert out.strip() == str(len(payload)).encode()
    assert err == b"done\n"
    assert exit_code(status) == 0


async def test_exec_with_tty_follows_resize_events(cri: Any, container: str) -> None:
    url = exec_url(cri, container, ["sh"], tty=True, stdin=True, stdout=True)
    command = await RemoteCommand.open(url, stdin=True, tty=True)
    assert set(command.streams) == {"error", "stdin", "stdout", "resize"}
    await command.resize(100, 40)
    await asyncio.sleep(0.3)
    await command.resize(123, 45)
    await asyncio.sleep(0.3)
    await command.streams["stdin"].write(b"stty size; exit 5\n")
    out, _, status = await command.finish()
    assert b"45 123" in out
    assert exit_code(status) == 5


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io",
                                      "channel.k8s.io"])
async def test_older_protocols_get_the_exit_as_text(cri: Any, container: str,
                                                    protocol: str) -> None:
    url = exec_url(cri, container, ["sh", "-c", "echo out; exit 7"], stdout=True,
                   stderr=True)
    command = await RemoteCommand.open(url, protocols=[protocol])
    assert command.client.protocol == protocol
    out, err, status = await command.finish()
    assert (out, err) == (b"out\n", b"")
    assert status == "command terminated with non-zero exit code: exit status 7"


async def test_exec_of_a_missing_binary_reports_the_failure(cri: Any, container: str) -> None:
    command = await RemoteCommand.open(exec_url(cri, container, ["/no/such/binary"],
                                                stdout=True, stderr=True))
    _, _, status = await command.finish()
    assert isinstance(status, dict) and status["status"] == "Failure", status
    # runc refuses to start it, or the process fails with 127: either way, no success.
    if status.get("reason") == "NonZeroExitCode":
        assert exit_code(status) in (126, 127)
    else:
        assert "/no/such/binary" in status["message"]


async def test_exec_is_killed_when_the_client_goes_away(cri: Any, container: str) -> None:
    url = exec_url(cri, container, ["sh", "-c", "echo started; exec sleep 1234"],
                   stdout=True, stderr=True)
    command = await RemoteCommand.open(url)
    await command.streams["stdout"].read_until(b"started")
    assert "sleep 1234" in processes(cri, container)
    await command.client.close()
    deadline = time.monotonic() + 15
    while "sleep 1234" in processes(cri, container):
        assert time.monotonic() < deadline, "the exec outlived its client"
        await asyncio.sleep(0.2)
