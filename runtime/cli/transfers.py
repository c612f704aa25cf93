"""Progress of pulls and pushes on the terminal: one ``rich`` bar per blob, plus a total.

Each bar shows bytes, speed, the transfer and unpack status and the registry
host that served the blob. Without a terminal (or with ``-q``) only finished
blobs are printed, one line each, so logs stay readable.
"""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing (and re with it): ``images pull``
# imports this module on its way to the standard-library client.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["follow", "human", "summary"]


def human(size: float) -> str:
    """``1.5 MiB``: bytes for people."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def follow(events: Iterator[Any], *, quiet: bool) -> Any:
    """Show progress of a pull or push; return its ``done`` line."""
    from runtime.api.types import ProgressBlob, ProgressDone, Resolved

    if quiet or not sys.stderr.isatty():
        done = None
        finished: set[tuple[str, str]] = set()
        for event in events:
            if isinstance(event, ProgressDone):
                done = event
            elif isinstance(event, Resolved) and not quiet:
                print(f"{event.name}: resolved to {event.digest} on {event.host}", file=sys.stderr)
            elif isinstance(event, ProgressBlob) and not quiet:
                state = (event.status, event.unpack)
                if (
                    event.status in ("done", "exists", "mounted")
                    and (event.digest, str(state)) not in finished
                ):
                    finished.add((event.digest, str(state)))
                    where = f" from {event.host}" if event.host else ""
                    unpack = f", {event.unpack}" if event.unpack else ""
                    print(
                        f"{event.kind:8} {_short(event.digest)}  {event.status}{unpack}  "
                        f"{human(event.total)}{where}",
                        file=sys.stderr,
                    )
        return done
    return _follow_rich(events)


def _follow_rich(events: Iterator[Any]) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    from runtime.api.types import ProgressBlob, ProgressDone, Resolved

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    tasks: dict[str, Any] = {}
    blobs: dict[str, Any] = {}
    done = None
    with Progress(*columns, console=console) as progress:
        total = progress.add_task("[bold]total", total=0, state="")
        for event in events:
            if isinstance(event, Resolved):
                console.print(f"{event.name} → {event.digest} ({event.host})")
            elif isinstance(event, ProgressBlob):
                blobs[event.digest] = event
                if event.digest not in tasks:
                    tasks[event.digest] = progress.add_task(
                        f"{event.kind:8} {_short(event.digest)}", total=event.total, state=""
                    )
                state = event.status + (f" · {event.unpack}" if event.unpack else "")
                if event.host and event.status == "done":
                    state += f" · {event.host.split('://')[-1]}"
                progress.update(tasks[event.digest], completed=event.offset, state=state)
                progress.update(
                    total,
                    total=sum(b.total for b in blobs.values()),
                    completed=sum(b.offset for b in blobs.values()),
                    state=f"{len(blobs)} blobs",
                )
            elif isinstance(event, ProgressDone):
                done = event
    return done


def summary(verb: str, done: Any, target: str = "") -> None:
    """Print the last line of a pull or push: image, digest, duration, bytes, phases."""
    if done is None or done.image is None:
        return
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in done.timings.items() if k != "total")
    where = f" to {target}" if target else ""
    print(
        f"{verb} {done.image.name}{where} ({done.image.target.digest}) in {done.seconds:.2f}s, "
        f"{human(done.bytes)} transferred" + (f" [{timings}]" if timings else ""),
        file=sys.stderr,
    )
