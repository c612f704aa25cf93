"""``moorage daemon|version|plugins|events``."""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing; argparse only for the types:
# `moorage daemon` is parsed without it (runtime.cli.main._FAST).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add this group's commands."""
    from runtime.cli.main import LOG_LEVELS, add_list_command, add_output_flags

    p = sub.add_parser("daemon", help="run the daemon")
    p.add_argument("--config", "-c", default=None,
                   help="plugins.toml (default: /etc/moorage/plugins.toml if it exists, "
                   "else built-in defaults)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    p.set_defaults(handler=daemon)

    p = sub.add_parser("version", help="client and daemon versions")
    add_output_flags(p)
    p.set_defaults(handler=version)

    plugins = sub.add_parser("plugins", help="plugin introspection")
    psub = plugins.add_subparsers(dest="plugins_command", required=True, metavar="COMMAND")
    add_list_command(psub, "list plugins with status and origin", plugins_ls,
                     filters="filters (type==snapshotter, status==error)", aliases=())

    p = sub.add_parser("events", help="follow events of the namespace")
    p.add_argument("--filter", "-f", action="append", default=[], help="containerd filter; repeat")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=events)


def daemon(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground."""
    from runtime.core import collector

    collector.pause()  # before the daemon's imports; resumed once its plugins have started
    from runtime.core.daemon import run_daemon
    from runtime.core.logs import setup_logging

    setup_logging(args.log_level)
    return run_daemon(args.config)


def version(args: argparse.Namespace) -> int:
    """Print client and server versions."""
    import runtime
    from runtime.cli.main import client

    server = client(args).version()
    if args.format == "json":
        import msgspec

        print(msgspec.json.encode({"client": runtime.__version__, "server": server}).decode())
    else:
        print(f"Client:\n  Version: {runtime.__version__}\nServer:\n  Version: {server.version}")
    return 0


def plugins_ls(args: argparse.Namespace) -> int:
    """Table of plugins."""
    import msgspec

    from runtime.cli.main import client
    from runtime.cli.output import emit

    items = client(args).plugins()
    if args.filters:
        from runtime.core.filters import adapt, parse

        flt = parse(args.filters)
        items = [i for i in items if flt.match(adapt(msgspec.to_builtins(i)))]
    emit(
        args,
        items,
        headers=("TYPE", "ID", "STATUS", "ORIGIN", "REASON"),
        row=lambda p: (p.type, p.id, p.status, f"{p.distribution} {p.version}".strip(), p.reason),
        ident=lambda p: f"{p.type}.{p.id}",
    )
    return 0


def events(args: argparse.Namespace) -> int:
    """Follow events until interrupted."""
    import msgspec

    from runtime.cli.main import client

    for env in client(args).events(args.filter):
        if args.format == "json":
            sys.stdout.write(msgspec.json.encode(env).decode() + "\n")
        else:
            payload = msgspec.json.encode(env.event).decode()
            sys.stdout.write(f"{env.timestamp.isoformat()} {env.namespace} {env.topic} {payload}\n")
        sys.stdout.flush()
    return 0
