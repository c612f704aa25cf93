"""``moorage network ls|inspect``: the CNI conflists of ``network.cni`` as networks."""

from __future__ import annotations

from runtime.cli.verbs import client, docker_parser

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``network`` and its subcommands."""
    network = sub.add_parser("network", help="networks (the CNI conflists of network.cni)")
    nsub = network.add_subparsers(dest="network_command", required=True, metavar="COMMAND")
    p = docker_parser(nsub.add_parser("ls", aliases=["list"], help="list networks"))
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=network_ls)
    p = docker_parser(nsub.add_parser("inspect", help="networks as JSON, with attachments"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=network_inspect)


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
