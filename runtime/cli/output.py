"""Printing results: human tables by default, ``--format json`` for machines, ``-q`` for ids."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

__all__ = ["emit", "print_table"]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned columns separated by two spaces, like ``ctr``."""
    cells = [[str(c) for c in headers], *[[("" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = sys.stdout
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def emit(
    args: Any,
    items: Any,
    *,
    headers: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    ident: Callable[[Any], str],
) -> None:
    """Print ``items`` (one object or a list) according to ``--format`` and ``-q``."""
    many = isinstance(items, list)
    seq = items if many else [items]
    if getattr(args, "format", "table") == "json":
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(items)) + b"\n")
    elif getattr(args, "quiet", False):
        for item in seq:
            print(ident(item))
    else:
        print_table(headers, [row(i) for i in seq])
