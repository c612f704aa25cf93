"""``moorage snapshots [--snapshotter S] ls|tree|prepare|view|commit|rm|mounts|usage|label``."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

__all__ = ["mount_command", "register"]


def register(sub: Any) -> None:
    """Add this group's commands (argument order as ``ctr``)."""
    from runtime.cli.main import add_label_command, add_list_command

    s = sub.add_parser("snapshots", aliases=["snapshot"], help="snapshots")
    s.add_argument("--snapshotter", default="overlayfs")
    ssub = s.add_subparsers(dest="snapshots_command", required=True, metavar="COMMAND")
    add_list_command(ssub, "list snapshots", ls)
    p = ssub.add_parser("tree", help="snapshots as a tree of parents")
    p.set_defaults(handler=tree)
    for name, view in (("prepare", False), ("view", True)):
        p = ssub.add_parser(name, help=f"{name} KEY [PARENT]")
        p.add_argument("key")
        p.add_argument("parent", nargs="?", default="")
        p.add_argument("--target", default="", help="print the mount command for this target")
        p.set_defaults(handler=prepare, view=view)
    p = ssub.add_parser("commit", help="commit NAME KEY")
    p.add_argument("name")
    p.add_argument("key")
    p.set_defaults(handler=commit)
    p = ssub.add_parser("rm", aliases=["remove", "delete"], help="remove KEY...")
    p.add_argument("keys", nargs="+")
    p.set_defaults(handler=rm)
    p = ssub.add_parser("mounts", help="mounts TARGET KEY: print the mount command")
    p.add_argument("target")
    p.add_argument("key")
    p.set_defaults(handler=mounts)
    p = ssub.add_parser("usage", help="usage [KEY]")
    p.add_argument("key", nargs="?", default="")
    p.set_defaults(handler=usage)
    add_label_command(ssub, "key", label, "label KEY KEY=VALUE...")


def mount_command(mounts: list[Any], target: str) -> str:
    """The ``mount`` command line(s) that mount ``mounts`` at ``target``."""
    lines = []
    for m in mounts:
        where = target if not m.target else f"{target.rstrip('/')}/{m.target.lstrip('/')}"
        opts = f" -o {shlex.quote(','.join(m.options))}" if m.options else ""
        lines.append(f"mount -t {m.type} {shlex.quote(m.source)} {shlex.quote(where)}{opts}")
    return "\n".join(lines)


def ls(args: argparse.Namespace) -> int:
    """List snapshots."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(
        args,
        client(args).snapshots(args.snapshotter, args.filters),
        headers=("KEY", "PARENT", "KIND"),
        row=lambda i: (i.name, i.parent, i.kind),
        ident=lambda i: i.name,
    )
    return 0


def tree(args: argparse.Namespace) -> int:
    """Print snapshots indented under their parents."""
    from runtime.cli.main import client

    infos = client(args).snapshots(args.snapshotter)
    children: dict[str, list[Any]] = {}
    for info in infos:
        children.setdefault(info.parent, []).append(info)

    def show(parent: str, depth: int) -> None:
        for info in sorted(children.get(parent, []), key=lambda i: i.name):
            print(f"{'  ' * depth}\\_ {info.name}" if depth else info.name)
            show(info.name, depth + 1)

    show("", 0)
    return 0


def prepare(args: argparse.Namespace) -> int:
    """Prepare an active snapshot or a view."""
    from runtime.cli.main import client

    mounts = client(args).prepare_snapshot(args.snapshotter, args.key, args.parent, view=args.view)
    if args.target:
        print(mount_command(mounts, args.target))
    return 0


def commit(args: argparse.Namespace) -> int:
    """Commit KEY as NAME."""
    from runtime.cli.main import client

    client(args).commit_snapshot(args.snapshotter, args.name, args.key)
    return 0


def rm(args: argparse.Namespace) -> int:
    """Remove snapshots."""
    from runtime.cli.each import for_each
    from runtime.cli.main import client

    api = client(args)
    return for_each(args.keys, lambda key: api.remove_snapshot(args.snapshotter, key), echo=False)


def mounts(args: argparse.Namespace) -> int:
    """Print the mount command for KEY at TARGET."""
    from runtime.cli.main import client

    print(mount_command(client(args).snapshot_mounts(args.snapshotter, args.key), args.target))
    return 0


def usage(args: argparse.Namespace) -> int:
    """Disk usage of one snapshot or all."""
    from runtime.cli.main import client
    from runtime.cli.output import print_table

    api = client(args)
    keys = [args.key] if args.key else [i.name for i in api.snapshots(args.snapshotter)]
    rows = []
    for key in keys:
        u = api.snapshot_usage(args.snapshotter, key)
        rows.append((key, u.size, u.inodes))
    print_table(("KEY", "SIZE", "INODES"), rows)
    return 0


def label(args: argparse.Namespace) -> int:
    """Set labels on a snapshot."""
    from runtime.cli.main import client
    from runtime.cli.namespaces import format_labels, parse_labels

    info = client(args).label_snapshot(args.snapshotter, args.key, parse_labels(args.labels))
    print(format_labels(info.labels))
    return 0
