"""``moorage volume create|ls|inspect|rm|prune``: named volumes (``-v NAME:PATH``)."""

from __future__ import annotations

import os

from runtime.cli.verbs import EXIT_USAGE, client, docker_parser

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``volume`` and its subcommands."""
    volume = docker_parser(sub.add_parser("volume", help="named volumes (-v NAME:PATH)"))
    vsub = volume.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    p = docker_parser(vsub.add_parser("create", help="create a volume"))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("name", nargs="?", default="", help="default: random")
    p.set_defaults(handler=volume_create)
    p = docker_parser(vsub.add_parser("ls", aliases=["list"], help="list volumes"))
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=volume_ls)
    p = docker_parser(vsub.add_parser("inspect", help="volumes as JSON"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=volume_inspect)
    p = docker_parser(vsub.add_parser("rm", aliases=["remove"],
                                      help="remove volumes (refused while mounted)"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=volume_rm)
    p = docker_parser(vsub.add_parser("prune", help="remove every volume no container uses"))
    p.add_argument("-f", "--force", action="store_true", help="accepted for Docker's sake")
    p.set_defaults(handler=volume_prune)


def volume_create(args: argparse.Namespace) -> int:
    """Create a volume; print its name."""
    from runtime.cli.namespaces import parse_labels

    name = args.name or os.urandom(16).hex()
    found = client(args).call("POST", "/v1/volumes", dict,
                            body={"name": name, "labels": parse_labels(args.label)})
    print(found["name"])
    return 0


def volume_ls(args: argparse.Namespace) -> int:
    """Volumes: name, mountpoint, the containers using them."""
    import json

    from runtime.cli.output import print_table

    found: list[dict[str, Any]] = client(args).call("GET", "/v1/volumes", list)
    if args.quiet:
        for volume in found:
            print(volume["name"])
    elif args.format == "json":
        print(json.dumps(found, indent=2))
    else:
        print_table(("DRIVER", "VOLUME NAME", "USED BY", "MOUNTPOINT"),
                    [("local", v["name"], ",".join(v["used_by"]), v["mountpoint"])
                     for v in found])
    return 0


def volume_inspect(args: argparse.Namespace) -> int:
    """A JSON list of the named volumes."""
    import json

    api = client(args)
    print(json.dumps([api.call("GET", f"/v1/volumes/{name}", dict) for name in args.names],
                     indent=2))
    return 0


def volume_rm(args: argparse.Namespace) -> int:
    """Remove volumes; one in use is refused (exit 125, nothing removed for it)."""
    from runtime.cli.each import for_each

    api = client(args)
    code = for_each(args.names, lambda name: api.call("DELETE", f"/v1/volumes/{name}"))
    return EXIT_USAGE if code else 0


def volume_prune(args: argparse.Namespace) -> int:
    """Remove unused volumes; print their names."""
    for name in client(args).call("POST", "/v1/volumes/prune", dict)["removed"]:
        print(name)
    return 0
