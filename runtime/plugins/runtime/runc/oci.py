"""The OCI runtime's command line (runc, crun): one call per operation, errors translated.

Both runtimes take the same global flags and print errors as JSON lines on
stderr with ``--log-format json``; the message of the last error line becomes
the text of the raised :class:`~runtime.core.errors.MoorageError`. Every call
has a deadline so that a stuck runtime shows up as an error, never a hang.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from runtime.core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    MoorageError,
    NotFound,
)

__all__ = ["OciRuntime", "runtime_message"]

# Substrings of runtime errors, mapped to the class to raise (first match wins).
_NOT_FOUND = ("does not exist", "no such file or directory", "not found")
_PRECONDITION = ("not running", "not paused", "is paused", "cannot ", "already",
                 "is not", "container is")


def runtime_message(stderr: bytes) -> str:
    """The error a runtime printed: the last JSON ``msg``, else the last non-empty line."""
    message = ""
    for line in stderr.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            message = line
            continue
        if isinstance(record, dict) and "msg" in record:
            if record.get("level", "error") in ("error", "fatal"):
                message = str(record["msg"])
        else:
            message = line
    return message


class OciRuntime:
    """Runs ``<binary> --root <root>/<namespace> ... <command>``.

    Args:
        binary: ``runc``, ``crun`` or a path.
        root: Directory of the runtime's state; one subdirectory per namespace,
            so equal container ids in two namespaces never collide.
        timeout: Seconds any single call may take.
        systemd_cgroup: Pass ``--systemd-cgroup``.
    """

    def __init__(self, binary: str, root: Path, *, timeout: float = 60.0,
                 systemd_cgroup: bool = False) -> None:
        self.binary = binary
        self.root = root
        self.timeout = timeout
        self.systemd_cgroup = systemd_cgroup

    def global_args(self, namespace: str) -> list[str]:
        """The flags that come before the command (also passed through conmon)."""
        args = ["--root", str(self.root / namespace), "--log-format", "json"]
        if self.systemd_cgroup:
            args.append("--systemd-cgroup")
        return args

    async def run(self, namespace: str, *args: str, input: bytes | None = None) -> bytes:
        """Run one command; return its stdout.

        Raises:
            NotFound: The container does not exist.
            FailedPrecondition: Its state forbids the command.
            DeadlineExceeded: The runtime did not answer in time.
            MoorageError: Any other failure, with the runtime's message.
        """
        cmd = [self.binary, *self.global_args(namespace), *args]
        try:
            with anyio.fail_after(self.timeout):
                result = await anyio.run_process(cmd, input=input, check=False,
                                                 stderr=subprocess.PIPE)
        except TimeoutError:
            raise DeadlineExceeded(f"{self.binary} {args[0]} did not finish in "
                                   f"{self.timeout:g}s") from None
        except FileNotFoundError as exc:
            raise MoorageError(f"OCI runtime {self.binary!r} not found") from exc
        if result.returncode != 0:
            raise self._error(args, result.stderr)
        return bytes(result.stdout)

    def _error(self, args: Sequence[str], stderr: bytes) -> MoorageError:
        message = runtime_message(stderr) or f"exit status, no message from {self.binary}"
        text = f"{self.binary} {args[0]}: {message}"
        lowered = message.lower()
        if any(s in lowered for s in _NOT_FOUND):
            return NotFound(text)
        if any(s in lowered for s in _PRECONDITION):
            return FailedPrecondition(text)
        return MoorageError(text)

    async def state(self, namespace: str, container_id: str) -> dict[str, Any] | None:
        """The runtime's state document, or ``None`` if it does not know the container."""
        try:
            raw = await self.run(namespace, "state", container_id)
        except NotFound:
            return None
        state: dict[str, Any] = json.loads(raw)
        return state

    async def start(self, namespace: str, container_id: str) -> None:
        """Let a created container's process run."""
        await self.run(namespace, "start", container_id)

    async def kill(self, namespace: str, container_id: str, signal: int,
                   *, all: bool = False) -> None:
        """Send ``signal`` to the init process, or to every process with ``all``."""
        args = ["kill", *(["--all"] if all else []), container_id, str(signal)]
        await self.run(namespace, *args)

    async def pause(self, namespace: str, container_id: str) -> None:
        """Freeze the container."""
        await self.run(namespace, "pause", container_id)

    async def resume(self, namespace: str, container_id: str) -> None:
        """Thaw the container."""
        await self.run(namespace, "resume", container_id)

    async def delete(self, namespace: str, container_id: str, *, force: bool = True) -> None:
        """Forget the container (kill it first with ``force``); absent is fine."""
        with contextlib.suppress(NotFound):
            await self.run(namespace, "delete", *(["--force"] if force else []), container_id)

    async def ps(self, namespace: str, container_id: str) -> list[int]:
        """Pids of every process in the container's cgroup."""
        raw = await self.run(namespace, "ps", "--format", "json", container_id)
        pids = json.loads(raw or b"[]")
        return [int(p) for p in pids or []]

    async def update(self, namespace: str, container_id: str, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` (read from stdin as ``-r -``)."""
        await self.run(namespace, "update", "-r", "-", container_id,
                       input=json.dumps(resources).encode())

    async def list(self, namespace: str) -> list[dict[str, Any]]:
        """State documents of every container the runtime knows in ``namespace``."""
        if not (self.root / namespace).is_dir():
            return []
        raw = await self.run(namespace, "list", "--format", "json")
        found = json.loads(raw or b"[]")
        return list(found or [])

    async def features(self) -> dict[str, Any]:
        """The runtime's ``features`` document (OCI runtime-spec ``features.md``).

        runc has it since 1.1, crun since 1.5; an older binary, or one whose
        answer is not a JSON object, gives ``{}``.
        """
        try:
            with anyio.fail_after(self.timeout):
                result = await anyio.run_process([self.binary, "features"], check=False,
                                                 stderr=subprocess.DEVNULL)
        except (TimeoutError, OSError):
            return {}
        if result.returncode != 0:
            return {}
        try:
            document = json.loads(result.stdout)
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}
