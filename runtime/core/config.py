"""``plugins.toml``: the daemon's configuration, validated strictly and with named sources.

Top-level keys are a :class:`DaemonConfig`; each ``[plugins."<type>.<id>"]``
table is decoded separately onto that plugin's config Struct so an error can
name the file, the section and the key (msgspec alone reports dict keys as
``$[...]``).
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from runtime.api.constants import DEFAULT_SOCKET
from runtime.core.errors import InvalidArgument

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_CGROUP_PARENT",
    "AbsolutePath",
    "ApiConfig",
    "ConfigError",
    "DaemonConfig",
    "Program",
    "ProxyPluginConfig",
    "check_path_keys",
    "decode_plugin_config",
    "load_config",
    "parse_config",
    "socket_path_of",
]

CONFIG_VERSION = 1
#: The cgroup under which generated specs put containers: ``<parent>/<namespace>/<id>``.
DEFAULT_CGROUP_PARENT = "/moorage"
# A cgroup path component: letters, digits and the punctuation of systemd unit names.
_CGROUP_NAME = re.compile(r"[A-Za-z0-9_.@:+-]+")

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(InvalidArgument):
    """A configuration file is unreadable or invalid; the message names file, section and key."""


class _PathKey:
    """Marks a config field (``Annotated[str, ...]``) whose value names a file or directory."""

    def __init__(self, program: bool) -> None:
        self.program = program


#: A config key naming a file or directory: an absolute path, or ``""`` for the default.
#: Relative paths are refused: they would depend on the daemon's working directory.
AbsolutePath = Annotated[str, _PathKey(program=False)]
#: A config key naming a program: a bare name looked up on ``PATH``, or an absolute path.
Program = Annotated[str, _PathKey(program=True)]

_UNIX = "unix://"


def _path_problem(value: str, program: bool = False) -> str:
    """Why ``value`` is no acceptable path ("" when it is)."""
    if not value or value.startswith("/"):
        return ""
    if "://" in value:
        return f"{value!r} is a URL, not a path; use an absolute path"
    if program and "/" not in value:
        return ""
    return f"{value!r} is a relative path (it would depend on the daemon's working directory)"


def socket_path_of(address: str) -> str:
    """The socket path of a listen address: ``unix:///path`` or an absolute ``/path``.

    Raises:
        InvalidArgument: A relative path, an empty one, or another scheme.
    """
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "unix":
        raise InvalidArgument(
            f"{address!r} has the unknown scheme {scheme!r}; use unix:///path or /path")
    path = rest if sep else address
    if not path:
        raise InvalidArgument(f"{address!r} names no socket path; use unix:///path or /path")
    if not path.startswith("/"):
        raise InvalidArgument(
            f"{address!r} is a relative path (it would depend on the daemon's working "
            "directory); use unix:///absolute/path or /absolute/path")
    return path


def check_path_keys(value: msgspec.Struct, source: str, section: str, prefix: str = "") -> None:
    """Check every :data:`AbsolutePath` and :data:`Program` field of ``value`` (nested too).

    Raises:
        ConfigError: Naming the file, the section and the key.
    """
    try:
        hints = typing.get_type_hints(type(value), include_extras=True)
    except (NameError, TypeError):
        # A third party's config whose annotations name what its module no longer
        # holds (a class made in a function): msgspec decoded it; nothing is marked.
        return
    for name in value.__struct_fields__:
        hint, item = hints.get(name), getattr(value, name)
        key = f"{prefix}{name}"
        if isinstance(item, msgspec.Struct):
            check_path_keys(item, source, section, f"{key}.")
            continue
        items = item if isinstance(item, list) else [item]
        if typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        marks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, _PathKey)]
        if not marks:
            continue
        for element in items:
            problem = _path_problem(str(element), marks[0].program)
            if problem:
                raise ConfigError(f"{source}: [{section}] key '{key}': {problem}")


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[api]`` section: where the admin API listens."""

    #: Unix socket of the admin API (mode 0660): ``/path`` or ``unix:///path``; a loaded
    #: configuration holds the bare path.
    address: str = DEFAULT_SOCKET
    #: Optional ``host:port`` for a TCP listener; every request must carry the token.
    tcp_address: str = ""
    #: File holding the bearer token required on the TCP listener.
    token_file: AbsolutePath = ""
    #: Seconds the daemon waits for plugins to stop at shutdown.
    shutdown_timeout: float = 10.0


class ProxyPluginConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A ``[proxy_plugins.<name>]`` section: a plugin served by another process."""

    type: str
    address: str
    timeout: float = 10.0


class DaemonConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole ``plugins.toml``; plugin tables stay raw until their Structs are known."""

    version: int = CONFIG_VERSION
    #: Persistent data; each plugin gets ``<root>/<type>.<id>``.
    root: AbsolutePath = "/var/lib/moorage"
    #: Volatile data (tmpfs); each plugin gets ``<state>/<type>.<id>``.
    state: AbsolutePath = "/run/moorage"
    #: The cgroup that containers created with a generated spec go under, as
    #: ``<cgroup_parent>/<namespace>/<id>`` (dockerd's ``cgroup-parent``); ``/`` gives
    #: containerd's ``/<namespace>/<id>``. Two daemons on one host need two parents.
    #: A spec given whole keeps its own ``cgroupsPath``.
    cgroup_parent: str = DEFAULT_CGROUP_PARENT
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    #: Plugins (``type.id``) removed before the graph is ordered.
    disabled_plugins: list[str] = msgspec.field(default_factory=list)
    #: Plugins (``type.id``) whose failure stops the daemon from starting.
    required_plugins: list[str] = msgspec.field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    proxy_plugins: dict[str, ProxyPluginConfig] = msgspec.field(default_factory=dict)
    #: Where this configuration was read from, for error messages.
    source: str = "<defaults>"


_PATH_IN_MSG = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`")


def _describe(err: msgspec.ValidationError, source: str, section: str) -> str:
    """Turn msgspec's ``... - at `$.a.b``` into ``file: [section] key 'a.b': ...``."""
    text = str(err)
    path = ""
    match = _PATH_IN_MSG.search(text)
    if match:
        path = match.group("path").lstrip(".")
        text = text[: match.start()]
        # A top-level section's own name is already in the brackets.
        if path == section or path.startswith(section + "."):
            path = path[len(section) + 1 :]
    unknown = _UNKNOWN_FIELD.match(text)
    if unknown:
        key = f"{path}.{unknown.group('key')}" if path else unknown.group("key")
        return f"{source}: [{section}] unknown key '{key}'"
    where = f" key '{path}'" if path else ""
    return f"{source}: [{section}]{where}: {text[0].lower()}{text[1:]}"


def parse_config(text: str, source: str = "<string>") -> DaemonConfig:
    """Parse and validate the top level of a configuration (plugin tables stay raw).

    Raises:
        ConfigError: TOML syntax errors, unknown keys, wrong types; the message
            names ``source``, the section and the key.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    for name, section in (("api", raw.get("api")),):
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
    plugins = raw.get("plugins", {})
    if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
        raise ConfigError(f'{source}: [plugins] must hold tables named "<type>.<id>"')
    proxies = raw.get("proxy_plugins", {})
    if not isinstance(proxies, dict):
        raise ConfigError(f'{source}: [proxy_plugins] must hold tables named "<name>"')
    for name, table in proxies.items():
        try:
            msgspec.convert(table, ProxyPluginConfig, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(_describe(exc, source, f"proxy_plugins.{name}")) from exc
    try:
        config = msgspec.convert(raw, DaemonConfig, strict=True)
    except msgspec.ValidationError as exc:
        # Re-run per section so the message says which table is wrong.
        raise ConfigError(_describe(exc, source, _section_of(exc))) from exc
    if config.version != CONFIG_VERSION:
        raise ConfigError(
            f"{source}: [top level] key 'version': unsupported version {config.version}, "
            f"this daemon reads version {CONFIG_VERSION}"
        )
    for key in ("root", "state"):
        if not getattr(config, key):
            raise ConfigError(f"{source}: [top level] key '{key}': must not be empty")
    check_path_keys(config.api, source, "api")
    check_path_keys(config, source, "top level")
    try:
        address = socket_path_of(config.api.address)
    except InvalidArgument as exc:
        raise ConfigError(f"{source}: [api] key 'address': {exc}") from None
    if config.api.tcp_address and not _valid_host_port(config.api.tcp_address):
        raise ConfigError(
            f"{source}: [api] key 'tcp_address': {config.api.tcp_address!r} is not host:port "
            "(the unix socket is 'address')")
    config = msgspec.structs.replace(
        config, api=msgspec.structs.replace(config.api, address=address))
    if Path(config.root).resolve() == Path(config.state).resolve():
        raise ConfigError(f"{source}: [top level] 'root' and 'state' must differ")
    if not _valid_cgroup_parent(config.cgroup_parent):
        raise ConfigError(
            f"{source}: [top level] key 'cgroup_parent': {config.cgroup_parent!r} is not an "
            "absolute cgroup path such as '/moorage' or '/'"
        )
    for key in ("disabled_plugins", "required_plugins"):
        for name in getattr(config, key):
            if "." not in name:
                raise ConfigError(
                    f"{source}: [top level] key '{key}': {name!r} is not a full "
                    "plugin name '<type>.<id>'"
                )
    return msgspec.structs.replace(config, source=source)


def _valid_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and "/" not in host and port.isdigit() and 0 < int(port) < 65536)


def _valid_cgroup_parent(path: str) -> bool:
    if path == "/":
        return True
    head, *names = path.split("/")
    # Trailing or doubled slashes and "."/".." would name the same cgroup twice over.
    return head == "" and bool(names) and all(
        _CGROUP_NAME.fullmatch(n) and n not in (".", "..") for n in names)


def _section_of(err: msgspec.ValidationError) -> str:
    match = _PATH_IN_MSG.search(str(err))
    if match and match.group("path").startswith(".api"):
        return "api"
    return "top level"


def load_config(path: Path | str | None) -> DaemonConfig:
    """Read ``path`` (``None``: built-in defaults) into a :class:`DaemonConfig`."""
    if path is None:
        return DaemonConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config(text, str(path))


def _defaults(struct: type[S]) -> S | None:
    """``struct()``, or ``None`` where only :func:`msgspec.convert` can tell what is wrong.

    What ``msgspec.convert({}, struct)`` gives, without building msgspec's
    decoder for the type: about 0.15 ms of CPU per plugin at daemon start, 2 ms
    in all, for the sections most configurations leave out. A required field
    (``TypeError``) or a ``__post_init__`` that refuses the defaults goes
    through ``convert``, which words the error.
    """
    try:
        return struct()
    except (TypeError, ValueError):
        return None


def decode_plugin_config(config: DaemonConfig, name: str, struct: type[S]) -> S:
    """Decode ``[plugins."<name>"]`` onto ``struct`` (defaults when the table is absent).

    Raises:
        ConfigError: naming the file, the section and the key at fault.
    """
    table = config.plugins.get(name, {})
    decoded = _defaults(struct) if not table else None
    try:
        if decoded is None:
            decoded = msgspec.convert(table, struct, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, config.source, f'plugins."{name}"')) from exc
    check_path_keys(decoded, config.source, f'plugins."{name}"')
    return decoded
