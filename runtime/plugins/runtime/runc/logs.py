"""Read the ``k8s-file`` logs conmon writes: ``<RFC3339Nano> <stream> <P|F> <text>`` lines.

``F`` ends a line (the newline was stripped and is added back here); ``P`` is
a partial line whose rest follows in the next entry. Following a log polls the
file for growth until the process has exited and everything was read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread

from runtime.api.tasks import LogEntry

__all__ = ["follow_log", "parse_line"]

_POLL = 0.1
_CHUNK = 65536


def _time(text: str) -> datetime:
    # Python keeps microseconds: cut the nanoseconds' last three digits.
    head, dot, rest = text.partition(".")
    if dot:
        count = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(count, 6)]}{rest[count:]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)


def parse_line(line: bytes) -> LogEntry | None:
    """One log line (without its newline) into an entry; ``None`` if malformed."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return None
    text = parts[3] if len(parts) == 4 else b""
    data = text.decode(errors="replace") + ("\n" if parts[2] == b"F" else "")
    return LogEntry(time=_time(parts[0].decode()), stream=parts[1].decode(), data=data)


async def follow_log(
    path: Path, *, follow: bool, done: Callable[[], bool]
) -> AsyncIterator[LogEntry]:
    """Yield the entries of ``path``; with ``follow``, keep going until ``done()`` and EOF.

    A missing file reads as empty (the process may not have written yet).
    """
    position = 0
    pending = b""
    while True:
        finished = done()
        chunk = await anyio.to_thread.run_sync(_read_from, path, position)
        position += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            entry = parse_line(line)
            if entry is not None:
                yield entry
        if chunk:
            continue
        # Checked before the read: output written before the exit is never skipped.
        if not follow or finished:
            return
        await anyio.sleep(_POLL)


def _read_from(path: Path, position: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(position)
            return handle.read(_CHUNK)
    except FileNotFoundError:
        return b""
