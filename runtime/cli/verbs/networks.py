"""``moorage network ls|create|inspect|rm``: the CNI conflists of ``network.cni`` as networks."""

from __future__ import annotations

import sys

from runtime.cli.verbs import EXIT_USAGE, client, docker_parser

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``network`` and its subcommands."""
    network = docker_parser(sub.add_parser(
        "network", help="networks (the CNI conflists of network.cni)"))
    nsub = network.add_subparsers(dest="network_command", required=True, metavar="COMMAND")
    p = docker_parser(nsub.add_parser("ls", aliases=["list"], help="list networks"))
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=network_ls)
    p = docker_parser(nsub.add_parser("create", help="create a bridge network"))
    p.add_argument("--subnet", default="", metavar="CIDR",
                   help="a private subnet (default: a free /24 of 10.90.0.0/16)")
    p.add_argument("--gateway", default="", metavar="IP",
                   help="the bridge's address (default: the subnet's first)")
    p.add_argument("--bridge", default="", metavar="NAME",
                   help="the bridge device (default: br- and a hash of the name)")
    p.add_argument("-d", "--driver", default="bridge", help="bridge, the only driver")
    p.add_argument("name")
    p.set_defaults(handler=network_create)
    p = docker_parser(nsub.add_parser("inspect", help="networks as JSON, with attachments"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=network_inspect)
    p = docker_parser(nsub.add_parser("rm", aliases=["remove"],
                                      help="remove networks (refused while in use)"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=network_rm)


def _networks(api: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.call("GET", "/v1/networks", list)
    return found


def network_ls(args: argparse.Namespace) -> int:
    """Networks: name, CNI version, plugins, default."""
    import json

    from runtime.cli.output import print_table

    found = _networks(client(args))
    if args.quiet:
        for network in found:
            print(network["name"])
    elif args.format == "json":
        print(json.dumps(found, indent=2))
    else:
        print_table(("NAME", "DEFAULT", "CNI", "PLUGINS", "SOURCE"),
                    [(n["name"], "*" if n.get("default") else "", n["cni_version"],
                      ",".join(n["plugins"]), n["source"]) for n in found])
    return 0


def network_inspect(args: argparse.Namespace) -> int:
    """A JSON list of the named networks, each with the namespace's attachments to it."""
    import json

    from runtime.core.errors import NotFound

    api = client(args)
    by_name = {n["name"]: n for n in _networks(api)}
    attachments: list[dict[str, Any]] = api.call("GET", "/v1/networks/attachments", list)
    default = next((n for n, v in by_name.items() if v.get("default")), "")
    docs = []
    for name in args.names:
        wanted = default if name == "bridge" and name not in by_name else name
        if wanted not in by_name:
            raise NotFound(f"no such network: {name}")
        docs.append({**by_name[wanted], "containers": [
            {"id": a["container_id"], "ips": [ip["address"] for ip in a.get("ips", [])]}
            for a in attachments if a["network"] in (wanted, name)]})
    print(json.dumps(docs, indent=2))
    return 0


def network_create(args: argparse.Namespace) -> int:
    """Create a network; print its name (the subnet it got on stderr); 125 if refused."""
    from runtime.core.errors import MoorageError

    try:
        if args.driver != "bridge":
            from runtime.core.errors import InvalidArgument

            raise InvalidArgument(f"--driver {args.driver!r}: only bridge is supported")
        made: dict[str, Any] = client(args).call(
            "POST", "/v1/networks", dict,
            body={"name": args.name, "subnet": args.subnet, "gateway": args.gateway,
                  "bridge": args.bridge})
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(made["name"])
    print(f"subnet {made['subnet']}, gateway {made['gateway']}, bridge {made['bridge']}",
          file=sys.stderr)
    return 0


def network_rm(args: argparse.Namespace) -> int:
    """Remove networks; one in use is refused (exit 125, it stays)."""
    from runtime.cli.each import for_each

    api = client(args)
    code = for_each(args.names, lambda name: api.call("DELETE", f"/v1/networks/{name}"))
    return EXIT_USAGE if code else 0
