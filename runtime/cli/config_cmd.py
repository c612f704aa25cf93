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


def key_docs(struct: type) -> dict[str, str]:
    """One line about each field of a config Struct, from its ``#:`` comments or docstring.

    The docstring's ``Attributes:`` entries (``name: text``, continued on more
    indented lines) and the ``#:`` comments above a field both count; the first
    sentence is kept.
    """
    import inspect
    import re

    docs: dict[str, str] = {}
    doc = inspect.getdoc(struct) or ""
    in_attributes, current = False, ""
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attributes = True
            continue
        if not in_attributes:
            continue
        entry = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if entry:
            current = entry.group(1)
            docs[current] = entry.group(2).strip()
        elif line.startswith("        ") and current:
            docs[current] += " " + line.strip()
        elif line.strip():
            in_attributes = False  # the next section
    try:
        source = inspect.getsource(struct)
    except (OSError, TypeError):
        source = ""
    pending: list[str] = []
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        field = re.match(r"^(\w+)\s*:", text)
        if field and pending:
            docs.setdefault(field.group(1), " ".join(pending))
        pending = []
    return {key: _first_sentence(text) for key, text in docs.items()}


def _first_sentence(text: str, width: int = 110) -> str:
    """``text`` on one line; past ``width``, up to its first full stop (else semicolon)."""
    import re

    text = " ".join(text.replace("``", "").split())
    if len(text) <= width:
        return text
    stop = re.search(r"(?<!e\.g)(?<!i\.e)\.(\s|$)", text)
    if stop:
        return text[: stop.start() + 1]
    return text.partition("; ")[0]


def _value(value: Any) -> str:
    """A TOML value on one line (tables inline)."""
    import tomli_w

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return tomli_w.dumps({"x": value}).partition("=")[2].strip()


def _key(key: str) -> str:
    import tomli_w

    return tomli_w.dumps({key: 0}).partition("=")[0].strip()


def _table(values: dict[str, Any], docs: dict[str, str]) -> str:
    lines = []
    for key, value in values.items():
        if value is None:
            continue  # TOML has no null: an unset optional is simply left out
        lines.append(f"# {docs.get(key) or f'{key} (default shown)'}")
        lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"


def default_config_text() -> str:
    """A complete ``plugins.toml``: every key at its default, each after a one-line comment."""
    import msgspec

    from runtime.core.config import ApiConfig, DaemonConfig
    from runtime.core.discovery import discover

    top = msgspec.to_builtins(DaemonConfig())
    for key in ("source", "plugins", "proxy_plugins"):
        top.pop(key)
    api = top.pop("api")
    top_docs = {"version": "Version of this file's format.", **key_docs(DaemonConfig)}
    parts = ["# Moorage daemon configuration (moorage config default)\n"
             "# Read from /etc/moorage/plugins.toml unless `moorage daemon --config` names "
             "another file.\n"]
    discovery = discover()
    parts.extend(f"# warning: {f.source.entry_point}: {f.error}\n" for f in discovery.failures)
    parts.append(_table(top, top_docs))
    parts.append("\n# The admin API.\n[api]\n" + _table(api, key_docs(ApiConfig)))
    for reg, _ in discovery.registrations:
        if reg.config is not None:
            values = msgspec.to_builtins(reg.config())
            header = f"\n# {reg.description}\n" if reg.description else "\n"
            body = _table(values, key_docs(reg.config)) if values else ""
            parts.append(f'{header}[plugins."{reg.name}"]\n{body}')
    return "".join(parts)


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
