"""The CNI protocol: run one plugin binary for ADD or DEL, as the CNI specification describes.

The runtime passes parameters in the environment (``CNI_COMMAND``,
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_PATH``), the network
configuration on stdin, and reads a result (ADD) or nothing (DEL) on stdout.
A failing plugin exits non-zero with ``{"code", "msg", "details"}`` on stdout.
Foreign failures (a missing binary, a timeout, garbage output) become our
error classes here, at the boundary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec

from runtime.core.errors import DeadlineExceeded, FailedPrecondition, NotFound

__all__ = ["CniPluginError", "Invocation", "find_plugin", "invoke", "version_tuple"]

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: CNI's well-known error codes that mean "it is already gone" on DEL.
_GONE = ("not found", "no such", "does not exist", "cannot find")


class CniPluginError(FailedPrecondition):
    """A CNI plugin reported an error (its code and message are kept)."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        detail = f" ({details})" if details and details != msg else ""
        super().__init__(f"CNI plugin {plugin} {command} failed: {msg}{detail} [code {code}]")
        self.plugin = plugin
        self.cni_code = code
        self.cni_msg = msg

    @property
    def gone(self) -> bool:
        """Whether the failure says the thing to delete does not exist."""
        return any(word in self.cni_msg.lower() for word in _GONE)


class Invocation(msgspec.Struct, frozen=True):
    """The parameters of one plugin run other than the configuration.

    Attributes:
        container_id: ``CNI_CONTAINERID``.
        netns: ``CNI_NETNS``.
        ifname: ``CNI_IFNAME``.
        bin_dirs: ``CNI_PATH`` (searched for the plugin and its delegates).
        timeout: Seconds the plugin may take.
        args: ``CNI_ARGS`` (``K=V;K=V``), empty for none.
    """

    container_id: str
    netns: str
    ifname: str
    bin_dirs: Sequence[Path]
    timeout: float = 30.0
    args: str = ""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` as ``(0, 4, 0)``; unparsable parts count as 0."""
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def find_plugin(type_: str, bin_dirs: Sequence[Path]) -> Path:
    """The executable for plugin ``type_`` in the first directory that has it.

    Raises:
        NotFound: No directory has it; the message lists where we looked.
    """
    if "/" in type_ or not type_:
        raise NotFound(f"CNI plugin type {type_!r} is not a plain name")
    for directory in bin_dirs:
        candidate = directory / type_
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise NotFound(
        f"CNI plugin {type_!r} not found in {', '.join(str(d) for d in bin_dirs)}"
    )


async def invoke(
    command: str, config: Mapping[str, Any], call: Invocation
) -> dict[str, Any] | None:
    """Run the plugin named by ``config["type"]``; return its parsed result (ADD).

    Raises:
        CniPluginError: The plugin exited non-zero.
        DeadlineExceeded: It did not finish within ``call.timeout``.
        NotFound: No such plugin binary.
        FailedPrecondition: Its output was not JSON.
    """
    type_ = str(config.get("type", ""))
    binary = find_plugin(type_, call.bin_dirs)
    env = {
        # A minimal, explicit environment: plugins shell out to iptables and ip.
        "PATH": os.environ.get("PATH", _DEFAULT_PATH),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": call.container_id,
        "CNI_NETNS": call.netns,
        "CNI_IFNAME": call.ifname,
        "CNI_PATH": os.pathsep.join(str(d) for d in call.bin_dirs),
    }
    if call.args:
        env["CNI_ARGS"] = call.args
    stdin = json.dumps(config).encode()
    try:
        with anyio.fail_after(call.timeout):
            done = await anyio.run_process([str(binary)], input=stdin, env=env, check=False)
    except TimeoutError:
        raise DeadlineExceeded(
            f"CNI plugin {type_} {command} did not finish within {call.timeout:g}s"
        ) from None
    out = done.stdout.strip()
    if done.returncode != 0:
        try:
            error = json.loads(out) if out else {}
        except ValueError:
            error = {}
        if not isinstance(error, dict):
            error = {}
        message = str(error.get("msg") or done.stderr.decode(errors="replace").strip()
                      or out.decode(errors="replace") or f"exit status {done.returncode}")
        raise CniPluginError(type_, command, int(error.get("code") or 0), message,
                             str(error.get("details") or ""))
    if not out:
        return None
    try:
        result = json.loads(out)
    except ValueError:
        raise FailedPrecondition(
            f"CNI plugin {type_} {command} printed no JSON: {out[:200]!r}"
        ) from None
    if not isinstance(result, dict):
        raise FailedPrecondition(f"CNI plugin {type_} {command} printed {type(result).__name__}")
    return result
