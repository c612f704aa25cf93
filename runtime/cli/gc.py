"""``moorage gc``: collect garbage now and print what went, and for how long writers waited."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from runtime.cli.transfers import human

if TYPE_CHECKING:
    from runtime.plugins.gc.api import GCReport

__all__ = ["register", "summary"]


def register(sub: Any) -> None:
    """Add this group's command."""
    p = sub.add_parser("gc", help="collect garbage now (every namespace)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=gc)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def summary(report: GCReport) -> str:
    """The line after the table: bytes freed and how long writers were held back."""
    return (
        f"freed {human(report.bytes_removed)}; pause {_ms(report.pause_seconds)} "
        f"(writer lock {_ms(report.lock_seconds)} in all), mark {_ms(report.mark_seconds)} "
        f"concurrent with writers, disk {_ms(report.disk_seconds)}, "
        f"total {_ms(report.total_seconds)}; {report.live} objects live"
        + (f", {report.rescued} kept by writes during the mark" if report.rescued else "")
    )


def gc(args: argparse.Namespace) -> int:
    """Run one collection and print its figures."""
    import msgspec

    from runtime.cli.main import client
    from runtime.cli.output import print_table

    report = client(args).gc()
    if args.format == "json":
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
        return 0
    rows = [
        (kind, r.records, r.disk, human(r.bytes))
        for kind, r in sorted(report.removed.items())
        if r.records or r.disk or r.bytes
    ]
    if rows:
        print_table(("KIND", "RECORDS", "ON DISK", "BYTES"), rows)
    else:
        print("nothing to remove")
    print(summary(report))
    return 0
