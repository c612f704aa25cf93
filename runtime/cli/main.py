"""``moorage``: argument parsing and dispatch; errors go to stderr with a non-zero exit.

Scripts call the CLI by the dozen, so a call imports only what its command
needs: the parser holds just the group of the command named on the command
line (every group for ``--help`` or a word no group claims), and ``version``,
``run``, ``images pull`` and the teardown commands (``tasks kill``, ``tasks rm``,
``containers rm``) skip argparse altogether unless their command line holds
something unusual.
``python -X importtime -m runtime.cli.main version`` shows what is left.
"""

from __future__ import annotations

import os
import sys

from runtime.api.constants import ADDRESS_ENV, NAMESPACE_ENV, TOKEN_FILE_ENV

# typing.TYPE_CHECKING without importing typing (a few ms of every call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence
    from typing import Any

__all__ = ["COMMANDS", "GROUPS", "build_parser", "main"]

#: Command groups (modules of ``runtime.cli``) in the order ``--help`` lists
#: them; each module's ``register(sub)`` adds its commands.
GROUPS = ("system", "namespaces", "content", "snapshots", "images", "containers", "run", "gc",
          "config_cmd", "verbs.containers", "verbs.inspect", "verbs.images", "verbs.volumes",
          "verbs.networks", "verbs.login", "verbs.cp", "verbs.commit", "verbs.disk", "completion")

#: The group adding each top-level command and alias (a test keeps it complete).
COMMANDS = {
    "daemon": "system", "version": "system", "plugins": "system", "events": "system",
    "namespaces": "namespaces", "ns": "namespaces",
    "content": "content", "leases": "content",
    "snapshots": "snapshots", "snapshot": "snapshots",
    "images": "images", "image": "images", "i": "images", "pull": "images",
    "containers": "containers", "c": "containers", "tasks": "containers", "t": "containers",
    "logs": "containers",
    "run": "run", "gc": "gc", "config": "config_cmd",
    **dict.fromkeys(("ps", "create", "exec", "stop", "start", "restart", "kill", "rm", "wait",
                     "pause", "unpause", "rename", "update"), "verbs.containers"),
    **dict.fromkeys(("inspect", "port", "info", "top", "stats"), "verbs.inspect"),
    **dict.fromkeys(("rmi", "tag", "save", "load"), "verbs.images"),
    "login": "verbs.login", "logout": "verbs.login", "cp": "verbs.cp",
    "commit": "verbs.commit", "system": "verbs.disk",
    "volume": "verbs.volumes", "network": "verbs.networks",
    "completion": "completion", "man": "completion",
}  # fmt: skip

#: Global options taking a value (for finding the command word without argparse).
_VALUED = ("--address", "-n", "--namespace", "--token-file")

#: ``moorage daemon --log-level`` choices.
LOG_LEVELS = ("debug", "info", "warning", "error")


def import_module(name: str) -> Any:
    """:func:`importlib.import_module` for absolute names, without importing importlib."""
    __import__(name)
    return sys.modules[name]


def build_parser(groups: Iterable[str] = GROUPS) -> argparse.ArgumentParser:
    """The command tree of ``groups`` (default: every command)."""
    import argparse

    parser = argparse.ArgumentParser(prog="moorage", description="Moorage container runtime")
    parser.add_argument(
        "--address",
        default=os.environ.get(ADDRESS_ENV),
        help="unix:///path or http://host:port (env MOORAGE_ADDRESS)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=os.environ.get(NAMESPACE_ENV),
        help="namespace (env MOORAGE_NAMESPACE, default 'default')",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get(TOKEN_FILE_ENV),
        help="bearer token for a TCP address",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in groups:
        import_module(f"runtime.cli.{group}").register(sub)
    return parser


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--format table|json`` and ``-q``."""
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="print ids only")


def add_list_command(sub: Any, help: str, handler: Any, *, filters: str | None = "",
                     aliases: Sequence[str] = ("list",)) -> argparse.ArgumentParser:
    """A group's ``ls``: ``--format``, ``-q`` and, unless ``filters`` is ``None``, filter words.

    Args:
        sub: The group's subparsers.
        help: The command's one line.
        handler: What the command runs.
        filters: Help of the positional ``filters`` (empty: none); ``None``: no filters.
        aliases: Other names of the command.
    """
    parser: argparse.ArgumentParser = sub.add_parser("ls", aliases=list(aliases), help=help)
    add_output_flags(parser)
    if filters is not None:
        parser.add_argument("filters", nargs="*", help=filters or None)
    parser.set_defaults(handler=handler)
    return parser


def add_label_command(sub: Any, key: str, handler: Any,
                      help: str = "set labels (KEY= removes)") -> argparse.ArgumentParser:
    """A group's ``label KEY KEY=VALUE...``; the object is named by the positional ``key``."""
    parser: argparse.ArgumentParser = sub.add_parser("label", help=help)
    parser.add_argument(key)
    parser.add_argument("labels", nargs="+", metavar="KEY=VALUE")
    parser.set_defaults(handler=handler)
    return parser


def client(args: Any) -> Any:
    """The API client for the global flags."""
    from runtime.client import Client

    return Client(args.address, namespace=args.namespace, token_file=args.token_file)


def lean_client(args: Any) -> Any:
    """The standard-library client (:mod:`runtime.client.lean`) for the global flags."""
    from runtime.client.lean import LeanClient

    return LeanClient(args.address, namespace=args.namespace, token_file=args.token_file)


def _split_globals(argv: Sequence[str]) -> tuple[dict[str, str], list[str]] | None:
    """Global options by name and the words from the command on; ``None`` for help."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value = argv[i + 1]
                i += 1
            found["namespace" if name == "-n" else name.lstrip("-").replace("-", "_")] = value
        elif word.startswith("-"):
            return None  # --help, or something argparse should judge
        else:
            return found, list(argv[i:])
        i += 1
    return None


def _fast_version(options: dict[str, str], rest: list[str]) -> int | None:
    """``moorage version [--format table|json]`` without argparse; ``None``: not that."""
    fmt = "table"
    if rest[1:] in (["--format", "json"], ["--format=json"]):
        fmt = "json"
    elif rest[1:] not in ([], ["--format", "table"], ["--format=table"]):
        return None
    import runtime
    from runtime.client.lean import LeanClient

    env = os.environ.get
    server = LeanClient(options.get("address") or env(ADDRESS_ENV),
                        namespace=options.get("namespace") or env(NAMESPACE_ENV),
                        token_file=options.get("token_file") or env(TOKEN_FILE_ENV),
                        ).version()
    if fmt == "json":
        import json

        print(json.dumps({"client": runtime.__version__, "server": vars(server)},
                         separators=(",", ":")))
    else:
        print(f"Client:\n  Version: {runtime.__version__}\nServer:\n  Version: {server.version}")
    return 0


#: Commands scripts run by the dozen, parsed without argparse (which imports
#: ``re``, ``gettext``, ``locale`` and ``shutil``, and with the group's parser
#: costs more than the request), and ``daemon``, whose start waits for nothing
#: else (about 14 ms of CPU): (group word, command word) -> (module,
#: handler, {flag: (dest, kind)}, positional kind, defaults). A flag's kind is
#: ``bool`` (store_true), ``str`` / ``int`` / ``float`` (one value, converted)
#: or ``list`` (a value appended each time); a value outside :data:`_FAST_CHOICES`
#: of its dest goes to argparse. Positional kinds: ``id`` and ``ref`` (exactly one
#: word), ``ids`` (one or more), ``image`` (the image, then the command: every word
#: after the image, flags included, as argparse's REMAINDER), ``none`` (no word).
#: A word this table does not expect sends the command line to argparse, which
#: then judges it (and prints the usual errors); a test keeps the table and the
#: parsers in step.
_RUN_FLAGS: dict[str, tuple[str, type]] = {
    "-e": ("env", list), "--env": ("env", list), "-u": ("user", str), "--user": ("user", str),
    "-w": ("workdir", str), "--workdir": ("workdir", str), "--entrypoint": ("entrypoint", str),
    "--hostname": ("hostname", str), "--mount": ("mount", list),
    "--read-only": ("read_only", bool), "--privileged": ("privileged", bool),
    "--security-opt": ("security_opt", list),
    "--cpus": ("cpus", float), "--memory": ("memory", str), "-m": ("memory", str),
    "--pids-limit": ("pids_limit", int), "-t": ("tty", bool), "--tty": ("tty", bool),
    "--runtime": ("runtime", str), "--snapshotter": ("snapshotter", str),
    "--label": ("label", list), "--net": ("network", str), "--network": ("network", str),
    "-p": ("publish", list), "--publish": ("publish", list), "--rootfs": ("rootfs", str),
    "--rm": ("rm", bool), "-d": ("detach", bool), "--detach": ("detach", bool),
    "-i": ("interactive", bool), "--interactive": ("interactive", bool),
    "--name": ("name", str), "--env-file": ("env_file", list), "--pull": ("pull", str),
    "--restart": ("restart", str), "-v": ("volume", list), "--volume": ("volume", list),
    "--tmpfs": ("tmpfs", list), "-P": ("publish_all", bool), "--publish-all": ("publish_all", bool),
    "--init": ("init", bool), "--add-host": ("add_host", list), "--dns": ("dns", list),
    "--dns-search": ("dns_search", list), "--dns-option": ("dns_option", list),
    "--dns-opt": ("dns_option", list),
}  # fmt: skip
_PULL_FLAGS: dict[str, tuple[str, type]] = {
    "--plain-http": ("plain_http", bool), "-u": ("user", str), "--user": ("user", str),
    "--hosts-dir": ("hosts_dir", str), "--platform": ("platform", list),
    "--all-platforms": ("all_platforms", bool), "--snapshotter": ("snapshotter", str),
    "--no-unpack": ("no_unpack", bool),
    "--max-concurrent-downloads": ("max_concurrent_downloads", int),
    "-q": ("quiet", bool), "--quiet": ("quiet", bool),
}  # fmt: skip
_PULL_DEFAULTS: dict[str, Any] = {
    "plain_http": False, "user": "", "hosts_dir": "", "platform": [], "all_platforms": False,
    "snapshotter": "", "no_unpack": False, "max_concurrent_downloads": 0, "quiet": False,
}  # fmt: skip
_FAST: dict[tuple[str, ...], tuple[str, str, dict[str, tuple[str, type]], str,
                                   dict[str, Any]]] = {
    ("tasks", "kill"): (
        "containers", "tasks_kill",
        {"-s": ("signal", str), "--signal": ("signal", str), "-a": ("all", bool),
         "--all": ("all", bool), "--exec-id": ("exec_id", str)},
        "ids", {"signal": "SIGTERM", "all": False, "exec_id": ""}),
    ("tasks", "rm"): (
        "containers", "tasks_rm",
        {"-f": ("force", bool), "--force": ("force", bool), "--exec-id": ("exec_id", str)},
        "ids", {"force": False, "exec_id": ""}),
    ("containers", "rm"): (
        "containers", "containers_rm",
        {"-f": ("force", bool), "--force": ("force", bool),
         "--keep-snapshot": ("keep_snapshot", bool)},
        "ids", {"force": False, "keep_snapshot": False}),
    ("images", "pull"): ("images", "pull", _PULL_FLAGS, "ref", _PULL_DEFAULTS),
    ("pull",): ("images", "pull", _PULL_FLAGS, "ref", _PULL_DEFAULTS),
    ("run",): (
        "run", "run", _RUN_FLAGS, "image",
        {"env": [], "user": "", "workdir": "", "entrypoint": None, "hostname": "", "mount": [],
         "read_only": False, "privileged": False, "security_opt": [], "cpus": 0.0,
         "memory": "", "pids_limit": 0,
         "tty": False, "runtime": "runc", "snapshotter": "", "label": [], "network": "bridge",
         "publish": [], "rootfs": "", "rm": False, "detach": False, "interactive": False,
         "name": "", "env_file": [], "pull": "missing", "restart": "no", "volume": [],
         "tmpfs": [], "publish_all": False, "init": False, "add_host": [], "dns": [],
         "dns_search": [], "dns_option": []}),
    ("daemon",): (
        "system", "daemon",
        {"--config": ("config", str), "-c": ("config", str), "--log-level": ("log_level", str)},
        "none", {"config": None, "log_level": "info"}),
}  # fmt: skip
#: The values a :data:`_FAST` flag's dest may take, where argparse has ``choices``.
_FAST_CHOICES: dict[str, tuple[str, ...]] = {"log_level": LOG_LEVELS}
_FAST_ALIASES = {"t": "tasks", "c": "containers", "i": "images", "image": "images",
                 "delete": "rm"}


def _fast_key(rest: list[str]) -> tuple[str, ...] | None:
    """The :data:`_FAST` key the command line starts with, if any."""
    if rest and rest[0] in ("run", "pull", "daemon"):
        return (rest[0],)
    if len(rest) >= 2:
        key = (_FAST_ALIASES.get(rest[0], rest[0]), _FAST_ALIASES.get(rest[1], rest[1]))
        if key in _FAST:
            return key
    return None


def _fast_args(options: dict[str, str], rest: list[str]) -> Any:
    """The namespace argparse would make for a :data:`_FAST` command; ``None``: not one."""
    key = _fast_key(rest)
    if key is None:
        return None
    module, handler, flags, positional, defaults = _FAST[key]
    values = {k: list(v) if isinstance(v, list) else v for k, v in defaults.items()}
    words: list[str] = []
    i = len(key)
    while i < len(rest):
        word = rest[i]
        if positional == "image" and words:
            words.append(word)  # the command: everything after the image, as it is
        elif word.startswith("-"):
            name, eq, value = word.partition("=")
            if name not in flags or (eq and not name.startswith("--")):
                return None  # argparse reads "-s=KILL" as "=KILL": let it
            dest, kind = flags[name]
            if kind is bool:
                if eq:
                    return None
                values[dest] = True
            else:
                if not eq:
                    if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                        return None
                    value = rest[i + 1]
                    i += 1
                if dest in _FAST_CHOICES and value not in _FAST_CHOICES[dest]:
                    return None  # argparse words the error
                if kind is list:
                    values[dest].append(value)
                else:
                    try:
                        values[dest] = kind(value)
                    except ValueError:
                        return None  # argparse words the error
        else:
            words.append(word)
        i += 1
    one = positional in ("id", "ref")
    if positional == "none":
        if words:
            return None
    elif not words or (one and len(words) != 1):
        return None
    elif positional == "image":
        values["image"], values["command"] = words[0], words[1:]
    else:
        values[positional] = words[0] if one else words
    from types import SimpleNamespace

    env = os.environ.get
    return SimpleNamespace(
        address=options.get("address") or env(ADDRESS_ENV),
        namespace=options.get("namespace") or env(NAMESPACE_ENV),
        token_file=options.get("token_file") or env(TOKEN_FILE_ENV),
        handler=getattr(import_module(f"runtime.cli.{module}"), handler), **values)


def _chosen(parser: argparse.ArgumentParser, args: Any,
            words: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The (sub)command parser the command line picked: the one setting its handler.

    Only subcommands named in ``words`` count: ``pull`` and ``images pull`` share a handler.
    """
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, picked in action.choices.items():
                if words and name not in words:
                    continue
                found = _chosen(picked, args, words)
                if found is not picked or picked.get_default("handler") is getattr(
                        args, "handler", None):
                    return found
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Any:
    """``parser.parse_args``, but words nobody expects are the subcommand's error.

    argparse leaves unknown flags to the top-level parser, which prints the
    top-level usage; the user needs that of the command they typed.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        _chosen(parser, args, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (and, as a console script, exits with) its exit code."""
    from runtime.core.errors import MoorageError

    argv = list(sys.argv[1:] if argv is None else argv)
    split = _split_globals(argv)
    groups: Iterable[str] = GROUPS
    try:
        if split is not None:
            options, rest = split
            if rest[0] == "version" and (code := _fast_version(options, rest)) is not None:
                return code
            if (args := _fast_args(options, rest)) is not None:
                return int(args.handler(args) or 0)
            if rest[0] in COMMANDS:
                groups = (COMMANDS[rest[0]],)
        args = parse(build_parser(groups), argv)
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
