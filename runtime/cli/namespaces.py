"""``moorage namespaces ls|create|rm|label``."""

from __future__ import annotations

from runtime.core.errors import InvalidArgument

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call);
# argparse too: `moorage run` imports parse_labels without it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["parse_labels", "register"]


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``k=v`` arguments into a dict; ``k=`` (empty value) removes a label on update."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"label {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def format_labels(labels: dict[str, str]) -> str:
    """``k1=v1,k2=v2``, sorted: labels as ``ls`` tables and ``label`` commands print them."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def register(sub: Any) -> None:
    """Add this group's commands."""
    from runtime.cli.main import add_label_command, add_list_command

    ns = sub.add_parser("namespaces", aliases=["ns"], help="manage namespaces")
    nsub = ns.add_subparsers(dest="ns_command", required=True, metavar="COMMAND")
    add_list_command(nsub, "list namespaces", ls, filters=None, aliases=())
    p = nsub.add_parser("create", help="create a namespace")
    p.add_argument("name")
    p.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(handler=create)
    p = nsub.add_parser("rm", aliases=["remove"], help="remove empty namespaces")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=rm)
    add_label_command(nsub, "name", label)


def ls(args: argparse.Namespace) -> int:
    """List namespaces."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(
        args,
        client(args).namespaces(),
        headers=("NAME", "LABELS"),
        row=lambda n: (n.name, format_labels(n.labels)),
        ident=lambda n: n.name,
    )
    return 0


def create(args: argparse.Namespace) -> int:
    """Create a namespace."""
    from runtime.cli.main import client

    client(args).create_namespace(args.name, parse_labels(args.labels))
    return 0


def rm(args: argparse.Namespace) -> int:
    """Remove namespaces; report each failure, exit 1 if any."""
    from runtime.cli.each import for_each
    from runtime.cli.main import client

    return for_each(args.names, client(args).delete_namespace)


def label(args: argparse.Namespace) -> int:
    """Set labels on a namespace."""
    from runtime.cli.main import client

    info = client(args).label_namespace(args.name, parse_labels(args.labels))
    print(f"{info.name}  {format_labels(info.labels)}")
    return 0
