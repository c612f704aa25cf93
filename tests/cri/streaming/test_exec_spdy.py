"""Exec over SPDY/3.1 through the URL the CRI Exec call returns, against a real daemon."""

from __future__ import annotations

from typing import Any

from tests.cri.streaming.spdy_client import RemoteCommand, exit_code


def exec_url(cri: Any, container_id: str, cmd: list[str], **flags: bool) -> str:
    response = cri.runtime.Exec(cri.pb.ExecRequest(container_id=container_id, cmd=cmd, **flags))
    return str(response.url)


async def test_exec_returns_stdout_stderr_and_exit_code(cri: Any, cri_image: str) -> None:
    _, container = cri.run_container(cri_image)
    url = exec_url(cri, container, ["sh", "-c", "echo out; echo err >&2; exit 3"],
                   stdout=True, stderr=True)
    command = await RemoteCommand.open(url)
    assert command.client.protocol == "v4.channel.k8s.io"
    out, err, status = await command.finish()
    assert (out, err) == (b"out\n", b"err\n")
    assert exit_code(status) == 3
    assert status["message"].startswith("command terminated with non-zero exit code")
