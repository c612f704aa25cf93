"""``moorage content ls|get|ingest|rm|label|active`` and ``moorage leases ls|create|rm``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from runtime.cli.namespaces import format_labels, parse_labels
from runtime.cli.transfers import human

__all__ = ["register"]

_CHUNK = 1 << 20


def register(sub: Any) -> None:
    """Add this group's commands."""
    from runtime.cli.main import add_label_command, add_list_command, add_output_flags

    c = sub.add_parser("content", help="content store")
    csub = c.add_subparsers(dest="content_command", required=True, metavar="COMMAND")
    add_list_command(csub, "list blobs", ls)
    p = csub.add_parser("get", help="write a blob to stdout")
    p.add_argument("digest")
    p.set_defaults(handler=get)
    p = csub.add_parser("ingest", help="upload stdin as a blob under REF (resumes)")
    p.add_argument("ref")
    p.add_argument("--expected-size", type=int, default=None)
    p.add_argument("--expected-digest", default=None)
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lease", default=None)
    p.set_defaults(handler=ingest)
    p = csub.add_parser("rm", aliases=["delete"], help="remove blobs")
    p.add_argument("digests", nargs="+")
    p.set_defaults(handler=rm)
    add_label_command(csub, "digest", label)
    p = csub.add_parser("active", help="uploads in progress")
    add_output_flags(p)
    p.set_defaults(handler=active)

    lz = sub.add_parser("leases", help="leases")
    lsub = lz.add_subparsers(dest="leases_command", required=True, metavar="COMMAND")
    add_list_command(lsub, "list leases", leases_ls)
    p = lsub.add_parser("create", help="create a lease")
    p.add_argument("--id", default="")
    p.add_argument("--expire", type=float, default=None, help="seconds until it expires")
    p.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(handler=leases_create)
    p = lsub.add_parser("rm", aliases=["delete"], help="delete leases")
    p.add_argument("ids", nargs="+")
    p.set_defaults(handler=leases_rm)


def ls(args: argparse.Namespace) -> int:
    """List blobs."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(
        args,
        client(args).content(args.filters),
        headers=("DIGEST", "SIZE", "AGE", "LABELS"),
        row=lambda i: (
            i.digest,
            human(i.size),
            i.created_at.strftime("%Y-%m-%d %H:%M") if i.created_at else "",
            format_labels(i.labels),
        ),
        ident=lambda i: i.digest,
    )
    return 0


def get(args: argparse.Namespace) -> int:
    """Copy a blob to stdout."""
    from runtime.cli.main import client

    out = sys.stdout.buffer
    for chunk in client(args).read_content(args.digest):
        out.write(chunk)
    out.flush()
    return 0


def _stdin_from(offset: int) -> Iterator[bytes]:
    fd = sys.stdin.buffer.fileno()
    if offset:
        try:
            os.lseek(fd, offset, os.SEEK_SET)
        except OSError:
            # A pipe cannot seek: skip what the daemon already has.
            remaining = offset
            while remaining:
                skipped = os.read(fd, min(_CHUNK, remaining))
                if not skipped:
                    break
                remaining -= len(skipped)
    while chunk := os.read(fd, _CHUNK):
        yield chunk


def ingest(args: argparse.Namespace) -> int:
    """Upload stdin, resuming from the recorded offset of an earlier attempt."""
    from runtime.cli.main import client
    from runtime.core.errors import AlreadyExists, NotFound

    api = client(args)
    offset = 0
    with contextlib.suppress(NotFound):
        offset = api.ingest_status(args.ref).offset
    try:
        info = api.write_content(
            args.ref,
            _stdin_from(offset),
            offset=offset,
            total=args.expected_size,
            expected=args.expected_digest,
            commit=True,
            labels=parse_labels(args.label),
            lease=args.lease,
        )
    except AlreadyExists as exc:
        print(f"moorage: {exc.message}", file=sys.stderr)
        return 0
    print(getattr(info, "digest", ""))
    return 0


def rm(args: argparse.Namespace) -> int:
    """Remove blobs, reporting each failure."""
    from runtime.cli.each import for_each
    from runtime.cli.main import client

    return for_each(args.digests, client(args).delete_content)


def label(args: argparse.Namespace) -> int:
    """Set labels on a blob."""
    from runtime.cli.main import client

    info = client(args).label_content(args.digest, parse_labels(args.labels))
    print(f"{info.digest}  {format_labels(info.labels)}")
    return 0


def active(args: argparse.Namespace) -> int:
    """List uploads in progress."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(
        args,
        client(args).ingests(),
        headers=("REF", "OFFSET", "TOTAL", "UPDATED"),
        row=lambda s: (
            s.ref,
            s.offset,
            "" if s.total is None else s.total,
            s.updated_at.strftime("%Y-%m-%d %H:%M:%S") if s.updated_at else "",
        ),
        ident=lambda s: s.ref,
    )
    return 0


def leases_ls(args: argparse.Namespace) -> int:
    """List leases."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(
        args,
        client(args).leases(args.filters),
        headers=("ID", "CREATED", "LABELS"),
        row=lambda x: (
            x.id,
            x.created_at.strftime("%Y-%m-%d %H:%M:%S") if x.created_at else "",
            format_labels(x.labels),
        ),
        ident=lambda x: x.id,
    )
    return 0


def leases_create(args: argparse.Namespace) -> int:
    """Create a lease and print its id."""
    from runtime.cli.main import client

    print(client(args).create_lease(args.id, parse_labels(args.labels), args.expire).id)
    return 0


def leases_rm(args: argparse.Namespace) -> int:
    """Delete leases."""
    from runtime.cli.main import client

    api = client(args)
    for lease_id in args.ids:
        api.delete_lease(lease_id)
        print(lease_id)
    return 0
