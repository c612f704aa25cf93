"""``moorage completion bash|zsh|fish`` and ``moorage man``: generated from the parser itself.

Both walk the full argparse tree, so a new command or flag is completed and
documented without anyone editing a script. Install, for example::

    moorage completion bash > /etc/bash_completion.d/moorage
    moorage completion fish > ~/.config/fish/completions/moorage.fish
    moorage man > /usr/local/share/man/man1/moorage.1
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["command_words", "register"]


def register(sub: Any) -> None:
    """Add ``completion`` and ``man``."""
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh", "fish"))
    p.set_defaults(handler=completion)
    p = sub.add_parser("man", help="print the manual page (roff)")
    p.set_defaults(handler=manual)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")
            or len(o) == 2]


def command_words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """``"images"`` -> its subcommands and flags; ``"images ls"`` -> its flags; ``""``: top."""
    words: dict[str, list[str]] = {}

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        children = _subcommands(p)
        words[prefix] = sorted(children) + _flags(p)
        for name, child in children.items():
            walk(f"{prefix} {name}".strip(), child)

    walk("", parser)
    return words


def _bash(parser: argparse.ArgumentParser) -> str:
    cases = "\n".join(f'        "{key}") words="{" ".join(value)}" ;;'
                      for key, value in sorted(command_words(parser).items()) if key)
    top = " ".join(command_words(parser)[""])
    return f"""# bash completion for moorage (moorage completion bash)
_moorage() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" word i words
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case "$word" in
            --address|-n|--namespace|--token-file) ((i++)); continue ;;
            -*) continue ;;
        esac
        case " $(_moorage_words "${{path:+$path }}$word") " in
            "  ") ;;
            *) path="${{path:+$path }}$word" ;;
        esac
    done
    words=$(_moorage_words "$path")
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
_moorage_words() {{
    local words=""
    case "$1" in
        "") words="{top}" ;;
{cases}
    esac
    echo "$words"
}}
complete -o default -F _moorage moorage
"""


def _fish(parser: argparse.ArgumentParser) -> str:
    lines = ["# fish completion for moorage (moorage completion fish)"]
    top = _subcommands(parser)
    helps = _helps(parser)
    names = " ".join(sorted(top))
    for name in sorted(top):
        text = helps.get(name, "").replace("'", "\\'")
        lines.append(f"complete -c moorage -f -n 'not __fish_seen_subcommand_from {names}' "
                     f"-a {name} -d '{text}'")
    for name, child in sorted(top.items()):
        children = _subcommands(child)
        child_helps = _helps(child)
        for sub in sorted(children):
            text = child_helps.get(sub, "").replace("'", "\\'")
            lines.append(f"complete -c moorage -f -n '__fish_seen_subcommand_from {name}' "
                         f"-a {sub} -d '{text}'")
        for action in child._actions:
            longs = [o[2:] for o in action.option_strings if o.startswith("--")]
            shorts = [o[1:] for o in action.option_strings if len(o) == 2]
            if not longs and not shorts:
                continue
            spec = " ".join([*(f"-l {x}" for x in longs), *(f"-s {x}" for x in shorts)])
            text = (action.help or "").replace("'", "\\'")
            lines.append(f"complete -c moorage -n '__fish_seen_subcommand_from {name}' "
                         f"{spec} -d '{text}'")
    return "\n".join(lines) + "\n"


def completion(args: argparse.Namespace) -> int:
    """Print the completion script for ``args.shell``."""
    from runtime.cli.main import build_parser

    parser = build_parser()
    if args.shell == "fish":
        sys.stdout.write(_fish(parser))
    elif args.shell == "zsh":
        sys.stdout.write("#compdef moorage\nautoload -U +X bashcompinit && bashcompinit\n"
                         + _bash(parser))
    else:
        sys.stdout.write(_bash(parser))
    return 0


def _roff(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def manual(args: argparse.Namespace) -> int:
    """Print ``moorage(1)``: every command with its usage and options."""
    import runtime
    from runtime.cli.main import build_parser

    parser = build_parser()
    out = [f'.TH MOORAGE 1 "" "moorage {runtime.__version__}" "User Commands"',
           ".SH NAME", "moorage \\- container runtime daemon and its client",
           ".SH SYNOPSIS", _roff(parser.format_usage().removeprefix("usage: ").strip()),
           ".SH DESCRIPTION", _roff(parser.description or ""), ".SH COMMANDS"]

    def walk(prefix: str, p: argparse.ArgumentParser, helps: dict[str, str]) -> None:
        for name, child in sorted(_subcommands(p).items()):
            if child.prog in seen or not child.prog.endswith(f" {name}"):
                continue  # an alias: documented under the command's own name
            seen.add(child.prog)
            out.extend([".TP", f".B {_roff(f'{prefix} {name}'.strip())}",
                        _roff(helps.get(name, "")), ".nf",
                        _roff(child.format_usage().removeprefix("usage: ").strip()), ".fi"])
            for action in child._actions:
                if action.option_strings and action.help != argparse.SUPPRESS:
                    out.extend([".RS", ".TP", f".B {_roff(', '.join(action.option_strings))}",
                                _roff(action.help or ""), ".RE"])
            walk(f"{prefix} {name}", child, _helps(child))

    seen: set[str] = set()
    walk("", parser, _helps(parser))
    out.extend([".SH FILES", "/etc/moorage/plugins.toml \\- the daemon's configuration",
                ".SH SEE ALSO", "systemd.service(5)"])
    print("\n".join(out))
    return 0
