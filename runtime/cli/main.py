"""``moorage``: argument parsing and dispatch; errors go to stderr with a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from runtime.cli import (
    config_cmd,
    containers,
    content,
    gc,
    images,
    namespaces,
    run,
    snapshots,
    system,
)

__all__ = ["build_parser", "main"]

#: Command groups in the order ``--help`` lists them; each adds its subparsers.
GROUPS = (system, namespaces, content, snapshots, images, containers, run, gc, config_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(prog="moorage", description="Moorage container runtime")
    parser.add_argument(
        "--address",
        default=os.environ.get("MOORAGE_ADDRESS"),
        help="unix:///path or http://host:port (env MOORAGE_ADDRESS)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=os.environ.get("MOORAGE_NAMESPACE"),
        help="namespace (env MOORAGE_NAMESPACE, default 'default')",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("MOORAGE_TOKEN_FILE"),
        help="bearer token for a TCP address",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--format table|json`` and ``-q``."""
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="print ids only")


def client(args: Any) -> Any:
    """The API client for the global flags."""
    from runtime.client import Client

    return Client(args.address, namespace=args.namespace, token_file=args.token_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (and, as a console script, exits with) its exit code."""
    from runtime.core.errors import MoorageError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error worth a traceback.
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
