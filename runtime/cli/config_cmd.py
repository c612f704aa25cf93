"""``moorage config default|check``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["default_config_text", "register"]


def register(sub: Any) -> None:
    """Add this group's commands."""
    cfg = sub.add_parser("config", help="configuration files")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = csub.add_parser("default", help="print a complete plugins.toml with every default")
    p.set_defaults(handler=default)
    p = csub.add_parser("check", help="validate a plugins.toml")
    p.add_argument("file")
    p.set_defaults(handler=check)


def default_config_text() -> str:
    """A complete ``plugins.toml``: top-level defaults and every discovered plugin's."""
    import msgspec
    import tomli_w

    from runtime.core.config import DaemonConfig
    from runtime.core.discovery import discover

    def clean(value: Any) -> Any:
        # TOML has no null: an unset optional is simply left out.
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        return value

    top = msgspec.to_builtins(DaemonConfig())
    top.pop("source")
    top.pop("plugins")
    top.pop("proxy_plugins")
    discovery = discover()
    plugins: dict[str, Any] = {}
    for reg, _ in discovery.registrations:
        if reg.config is not None:
            plugins[reg.name] = clean(msgspec.to_builtins(reg.config()))
    text = tomli_w.dumps(clean({**top, "plugins": plugins}))
    notes = "".join(f"# warning: {f.source.entry_point}: {f.error}\n" for f in discovery.failures)
    return "# Moorage daemon configuration (moorage config default)\n" + notes + text


def default(args: argparse.Namespace) -> int:
    """Print the default configuration."""
    print(default_config_text(), end="")
    return 0


def check(args: argparse.Namespace) -> int:
    """Validate a file against the discovered plugins; errors name file, section and key.

    Plugins that could not start whatever the file says (a package that fails
    to import, a requirement nothing provides) are listed on stderr as notes.
    """
    import sys

    from runtime.core.config import load_config
    from runtime.core.discovery import discover
    from runtime.core.host import PluginHost, PluginStatus

    config = load_config(args.file)
    for record in PluginHost(config, discover()).plan():
        if record.status == PluginStatus.ERROR:
            print(
                f"note: plugin {record.type}.{record.id} {record.status}: {record.reason}",
                file=sys.stderr,
            )
    print(f"{args.file}: ok")
    return 0
