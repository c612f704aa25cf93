"""The flags of ``run`` and ``create`` and the SpecOptions JSON object they describe.

:func:`add_spec_flags` adds them to a parser; :func:`spec_dict_from` turns the
parsed values into the spec options the daemon validates and applies.
"""

from __future__ import annotations

import os

from runtime.cli.run_mounts import (
    parse_mount,
    parse_size,
    parse_tmpfs,
    parse_volume,
    resolve_volumes,
)

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = [
    "DNS_ANNOTATION",
    "HOSTS_ANNOTATION",
    "NETWORK_ANNOTATION",
    "PORTS_ANNOTATION",
    "add_spec_flags",
    "check_pull",
    "dns_settings",
    "expand_env",
    "name_annotations",
    "parse_add_host",
    "parse_size",
    "policy_labels",
    "read_env_files",
    "spec_dict_from",
    "spec_options_from",
]


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``run`` and ``containers create``."""
    import argparse

    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="KEY alone takes this shell's value")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="KEY=VALUE lines (# comments); read before -e")
    p.add_argument("--pull", default="missing", metavar="missing|always|never",
                   help="pull the image first: when missing (default), always or never")
    p.add_argument("--restart", default="no", metavar="POLICY",
                   help="no (default), always, on-failure[:N] or unless-stopped")
    p.add_argument("-u", "--user", default="", help="uid[:gid] or name[:group]")
    p.add_argument("-w", "--workdir", default="", help="working directory in the container")
    p.add_argument("--entrypoint", default=None, help="replace the image's entrypoint")
    p.add_argument("--hostname", default="")
    p.add_argument("--mount", action="append", default=[],
                   metavar="type=bind,src=PATH,dst=PATH[,options=ro:rbind]")
    p.add_argument("-v", "--volume", action="append", default=[],
                   metavar="HOST_PATH:CONTAINER_PATH[:ro|rw]",
                   help="bind-mount a host directory or file")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
                   help="mount a tmpfs (options such as size=64m,mode=1777)")
    p.add_argument("--read-only", action="store_true", help="read-only root filesystem")
    p.add_argument("--privileged", action="store_true",
                   help="all capabilities and devices, no seccomp filter")
    p.add_argument("--security-opt", action="append", default=[], metavar="seccomp=PROFILE",
                   help="seccomp=unconfined (no filter) or seccomp=PATH (a JSON profile)")
    p.add_argument("--cpus", type=float, default=0.0, help="CPU quota, e.g. 1.5")
    p.add_argument("--memory", "-m", default="", help="memory limit, e.g. 64m")
    p.add_argument("--pids-limit", type=int, default=0)
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--runtime", default="runc", help="runtime plugin (runc, crun)")
    p.add_argument("--snapshotter", default="", help="snapshotter for the image's rootfs")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--net", "--network", dest="network", default="bridge", metavar="NETWORK",
                   help="bridge (default), host, none, or a network's name")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]",
                   help="publish a container port on the host (no HOST_PORT: a random one)")
    p.add_argument("-P", "--publish-all", action="store_true",
                   help="publish every port the image exposes on a random host port")
    p.add_argument("--init", action="store_true",
                   help="run a tiny init (catatonit) as PID 1: it reaps and forwards signals")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:IP",
                   help="add a line to the container's /etc/hosts")
    p.add_argument("--dns", action="append", default=[], metavar="IP",
                   help="a name server for the container's resolv.conf")
    p.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN",
                   help="a search domain for the container's resolv.conf")
    p.add_argument("--dns-option", "--dns-opt", action="append", default=[],
                   metavar="OPTION", help="an options entry of resolv.conf (e.g. ndots:2)")
    # Runs a plain directory instead of an image; for tests and image-less hosts.
    p.add_argument("--rootfs", default="", help=argparse.SUPPRESS)


def expand_env(values: list[str], environ: Any = None) -> list[str]:
    """``-e KEY=VALUE`` as given; ``-e KEY`` takes the client's value (left out when unset)."""
    environ = os.environ if environ is None else environ
    out = []
    for value in values:
        if "=" in value:
            out.append(value)
        elif value in environ:
            out.append(f"{value}={environ[value]}")
    return out


def read_env_files(paths: list[str]) -> list[str]:
    """The ``KEY=VALUE`` (or ``KEY``) lines of ``--env-file`` files, comments left out."""
    from runtime.core.errors import InvalidArgument

    found = []
    for path in paths:
        try:
            with open(path) as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"--env-file {path!r}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith("=") or any(c.isspace() for c in text.partition("=")[0]):
                raise InvalidArgument(f"--env-file {path!r} line {number}: {line!r} is not "
                                      "KEY=VALUE")
            found.append(text)
    return found


def policy_labels(args: Any) -> dict[str, str]:
    """The labels ``--restart`` (and ``-d --rm``) ask the daemon's restart manager for."""
    from runtime.core.errors import InvalidArgument

    labels: dict[str, str] = {}
    restart = getattr(args, "restart", "no") or "no"
    remove_at_exit = getattr(args, "rm", False) and getattr(args, "detach", False)
    if restart == "no" and not remove_at_exit:
        return labels
    from runtime.plugins.restart.api import AUTO_REMOVE_LABEL, RESTART_LABEL, parse_policy

    if restart != "no":
        parse_policy(restart)
        if getattr(args, "rm", False):
            raise InvalidArgument(f"--restart {restart!r} and --rm cannot be combined")
        labels[RESTART_LABEL] = restart
    if remove_at_exit:
        labels[AUTO_REMOVE_LABEL] = "true"
    return labels


def check_pull(value: str) -> str:
    """A ``--pull`` value, or InvalidArgument naming it."""
    from runtime.core.errors import InvalidArgument

    if value not in ("missing", "always", "never"):
        raise InvalidArgument(f"--pull {value!r}: use missing, always or never")
    return value


def spec_options_from(args: argparse.Namespace, command: list[str], api: Any = None) -> Any:
    """The SpecOptions the flags describe (``command`` empty keeps the image's)."""
    import msgspec

    from runtime.api.specs import SpecOptions

    spec = spec_dict_from(args, command)
    if api is not None:
        resolve_volumes(api, spec)
    return msgspec.convert(spec, SpecOptions)


#: As runtime.plugins.network.api.NETWORK_ANNOTATION and PORTS_ANNOTATION: that
#: module imports msgspec, which ``moorage run`` does without (tests keep them equal).
NETWORK_ANNOTATION = "io.moorage.network"
PORTS_ANNOTATION = "io.moorage.ports"
#: As runtime.plugins.network.api.HOSTS_ANNOTATION and DNS_ANNOTATION (same reason).
HOSTS_ANNOTATION = "io.moorage.extra-hosts"
DNS_ANNOTATION = "io.moorage.dns"


def _host_name_ok(name: str) -> bool:
    return bool(name) and len(name) <= 253 and name[0].isalnum() and all(
        c.isalnum() or c in ".-_" for c in name)


def _ip(text: str) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def parse_add_host(text: str) -> str:
    """``--add-host NAME:IP`` (or ``NAME=IP``) as ``NAME:IP``, or InvalidArgument naming it."""
    from runtime.core.errors import InvalidArgument

    sep = "=" if "=" in text else ":"
    name, found, address = text.partition(sep)
    ip = _ip(address) if found else None
    if not _host_name_ok(name) or ip is None:
        raise InvalidArgument(f"--add-host {text!r}: expected NAME:IP (an IPv4 or IPv6 "
                              "address)")
    return f"{name}:{ip}"


def dns_settings(args: Any) -> dict[str, list[str]]:
    """``--dns``, ``--dns-search`` and ``--dns-option`` checked; empty when none was given."""
    from runtime.core.errors import InvalidArgument

    servers, search, options = (list(getattr(args, name, []) or []) for name in
                                ("dns", "dns_search", "dns_option"))
    for server in servers:
        if _ip(server) is None or server.startswith("["):
            raise InvalidArgument(f"--dns {server!r}: not an IP address")
    for domain in search:
        if domain != "." and not _host_name_ok(domain):
            raise InvalidArgument(f"--dns-search {domain!r}: not a domain name")
    for option in options:
        if not option or any(c.isspace() for c in option):
            raise InvalidArgument(f"--dns-option {option!r}: one word such as ndots:2")
    found = {"servers": servers, "search": search, "options": options}
    return {k: v for k, v in found.items() if v}


def name_annotations(args: Any) -> dict[str, str]:
    """The annotations ``--add-host`` and ``--dns*`` ask the runtime's network side for."""
    import json

    found: dict[str, str] = {}
    hosts = [parse_add_host(h) for h in getattr(args, "add_host", []) or []]
    if hosts:
        found[HOSTS_ANNOTATION] = json.dumps(hosts)
    dns = dns_settings(args)
    if dns:
        found[DNS_ANNOTATION] = json.dumps(dns)
    return found


def _network_mode(text: str) -> str:
    """As runtime.plugins.network.api.parse_mode."""
    from runtime.core.errors import InvalidArgument

    value = text.strip()
    if not value or not all(c.isalnum() or c in "._-" for c in value):
        raise InvalidArgument(f"network {text!r}: use bridge, host, none or a network name")
    return value


def _seccomp_option(options: list[str]) -> str:
    """SpecOptions.seccomp from ``--security-opt`` values: "", "unconfined" or a profile's JSON.

    The profile file is read here, by the client, as Docker does: the daemon may
    not see the caller's files.
    """
    from runtime.core.errors import InvalidArgument

    value = ""
    for option in options:
        key, sep, setting = option.partition("=")
        if key != "seccomp" or not sep or not setting:
            raise InvalidArgument(
                f"--security-opt {option!r}: supported: seccomp=unconfined, seccomp=PATH")
        if setting == "unconfined":
            value = setting
            continue
        try:
            with open(setting, encoding="utf-8") as profile:
                value = profile.read()
        except (OSError, UnicodeDecodeError) as exc:
            # Worded apart from "no such file": exit codes 126/127 are for the command.
            why = ("there is no such profile" if isinstance(exc, FileNotFoundError)
                   else "it may not be read" if isinstance(exc, PermissionError)
                   else getattr(exc, "strerror", None) or str(exc))
            raise InvalidArgument(
                f"--security-opt {option!r}: cannot read {setting}: {why}") from None
    return value


def spec_dict_from(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    """The flags as a SpecOptions JSON object, defaults left out (the daemon validates it)."""
    # The network travels in the spec's annotations; the runtime acts on them at task create.
    annotations = {NETWORK_ANNOTATION: _network_mode(args.network)}
    if args.publish:
        from runtime.plugins.network.api import encode_ports, parse_publish

        annotations[PORTS_ANNOTATION] = encode_ports([parse_publish(p) for p in args.publish])
    annotations.update(name_annotations(args))
    spec: dict[str, Any] = {
        "args": command or None,
        "entrypoint": [args.entrypoint] if args.entrypoint is not None else None,
        "env": expand_env([*read_env_files(getattr(args, "env_file", [])), *args.env]),
        "cwd": args.workdir, "user": args.user,
        "hostname": args.hostname,
        "mounts": [*(parse_mount(m) for m in args.mount),
                   *(parse_volume(v) for v in getattr(args, "volume", [])),
                   *(parse_tmpfs(t) for t in getattr(args, "tmpfs", []))],
        "readonly_rootfs": args.read_only, "privileged": args.privileged,
        "terminal": args.tty, "cpus": args.cpus,
        "memory": parse_size(args.memory) if args.memory else 0,
        "pids_limit": args.pids_limit, "annotations": annotations,
        "seccomp": _seccomp_option(getattr(args, "security_opt", [])),
        "init": getattr(args, "init", False),
        "publish_all": getattr(args, "publish_all", False),
    }  # fmt: skip
    # Defaults are left out; an empty entrypoint list still means "none".
    return {k: v for k, v in spec.items() if v or (k == "entrypoint" and v is not None)}
