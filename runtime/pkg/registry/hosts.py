"""Which URLs serve a registry domain: containerd's ``hosts.toml`` directories.

Layout (read on every :func:`load_hosts` call, so edits need no restart)::

    <hosts_dir>/<host>_<port>_/hosts.toml    tried first for "host:port"
    <hosts_dir>/<host:port>/hosts.toml
    <hosts_dir>/_default/hosts.toml          for every domain without its own

File format (the subset of containerd's we honour)::

    server = "https://registry.example.com"  # upstream, tried last; default: the domain
    capabilities = ["pull", "resolve", "push"]   # of the server (default: all three)
    ca = "ca.crt"                                # relative to the hosts.toml directory
    skip_verify = false
    override_path = false
    [header]
    x-custom = "value"                           # or a list, joined with ", "

    [host."https://mirror.example.com"]          # mirrors, tried in file order
    capabilities = ["pull", "resolve"]
    ...same keys as above...

``dial_timeout`` is accepted and ignored (the client has its own connect
timeout); ``client`` (TLS client certificates) is refused rather than silently
dropped, because the registry would then fail with a puzzling 401.
"""

from __future__ import annotations

import ipaddress
import logging
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from yarl import URL

from runtime.core.errors import InvalidArgument

__all__ = ["CAPABILITIES", "HostConfig", "is_loopback", "load_hosts"]

log = logging.getLogger("moorage.registry")

#: Everything a host may be allowed to do. ``resolve`` turns a tag into a digest,
#: ``pull`` fetches by digest (safe from any mirror), ``push`` uploads.
CAPABILITIES: tuple[str, ...] = ("pull", "resolve", "push")
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_LOOPBACK_NAMES = frozenset({"localhost"})
_KEYS = frozenset({"server", "capabilities", "ca", "skip_verify", "override_path", "header"})
_IGNORED_KEYS = frozenset({"dial_timeout"})


class HostConfig(msgspec.Struct):
    """One URL that can serve a registry domain, with what it may be used for.

    Attributes:
        url: ``https://host[:port][/path]`` or ``http://...``, without trailing ``/``.
        capabilities: Subset of :data:`CAPABILITIES`.
        ca: Path of a PEM CA bundle to trust for this host, or ``""`` for the system's.
        skip_verify: Do not verify the server's TLS certificate.
        headers: Extra request headers sent to this host.
        override_path: ``url`` already is the API root; do not append ``/v2``.
    """

    url: str
    capabilities: list[str] = msgspec.field(default_factory=lambda: list(CAPABILITIES))
    ca: str = ""
    skip_verify: bool = False
    headers: dict[str, str] = {}
    override_path: bool = False

    @property
    def api_root(self) -> URL:
        """The distribution API root: ``url`` + ``/v2`` unless ``override_path``."""
        url = URL(self.url)
        if self.override_path or url.path.rstrip("/").endswith("/v2"):
            return url
        return url.with_path(url.path.rstrip("/") + "/v2")

    @property
    def netloc(self) -> str:
        """``host[:port]`` of :attr:`url`, the key for credentials and tokens."""
        return URL(self.url).host_port_subcomponent or ""

    def can(self, capability: str) -> bool:
        """Tell whether this host may be used for ``capability``."""
        return capability in self.capabilities


def is_loopback(netloc: str) -> bool:
    """Tell whether ``host[:port]`` names this machine (127.0.0.0/8, ``::1``, localhost)."""
    host = URL(f"http://{netloc}").raw_host or ""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_url(domain: str, scheme: str) -> str:
    # Docker Hub's API does not live on docker.io itself.
    return f"{scheme}://{_DOCKER_HUB_API if domain == _DOCKER_HUB else domain}"


def _host_file(hosts_dir: Path, domain: str) -> Path | None:
    candidates: list[Path] = []
    host, colon, port = domain.rpartition(":")
    # "[::1]" has colons but no port; only a trailing ":digits" is a port.
    if colon and port.isdigit() and host:
        candidates.append(hosts_dir / f"{host}_{port}_" / "hosts.toml")
    candidates += [hosts_dir / domain / "hosts.toml", hosts_dir / "_default" / "hosts.toml"]
    return next((c for c in candidates if c.is_file()), None)


def _parse_url(raw: str, *, where: str, plain_http: bool) -> str:
    if "://" not in raw:
        # A bare host follows the client's HTTP choice, as in containerd.
        raw = f"{'http' if plain_http else 'https'}://{raw}"
    url = URL(raw)
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise InvalidArgument(f"{where}: {raw!r} is not an http(s) URL")
    return str(url).rstrip("/")


def _host_entry(
    url: str, table: dict[str, Any], *, where: str, base: Path, server: bool
) -> HostConfig:
    allowed = _KEYS if server else _KEYS - {"server"}
    unknown = sorted(set(table) - allowed - _IGNORED_KEYS - ({"host"} if server else set()))
    if "client" in unknown:
        raise InvalidArgument(f"{where}: TLS client certificates ('client') are not supported")
    if unknown:
        raise InvalidArgument(f"{where}: unknown keys {', '.join(unknown)}")
    try:
        caps = table.get("capabilities", list(CAPABILITIES))
        if not isinstance(caps, list) or not all(c in CAPABILITIES for c in caps):
            raise InvalidArgument(
                f"{where}: capabilities must be a list of {', '.join(CAPABILITIES)}; got {caps!r}"
            )
        ca = table.get("ca", "")
        if isinstance(ca, list):
            if len(ca) > 1:
                raise InvalidArgument(f"{where}: only one 'ca' file per host is supported")
            ca = ca[0] if ca else ""
        if not isinstance(ca, str):
            raise InvalidArgument(f"{where}: 'ca' must be a file path")
        headers: dict[str, str] = {}
        for key, value in dict(table.get("header", {})).items():
            # containerd allows a list per header; HTTP folds repeats with ", ".
            headers[str(key)] = ", ".join(value) if isinstance(value, list) else str(value)
        return HostConfig(
            url=url,
            capabilities=list(caps),
            # Relative CA paths are relative to the hosts.toml directory, as in containerd.
            ca=str(base / ca) if ca else "",
            skip_verify=bool(table.get("skip_verify", False)),
            headers=headers,
            override_path=bool(table.get("override_path", False)),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"{where}: {exc}") from exc


def _from_file(path: Path, domain: str, *, plain_http: bool) -> list[HostConfig]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from exc
    base = path.parent
    mirrors_table = doc.get("host", {})
    if not isinstance(mirrors_table, dict):
        raise InvalidArgument(f"{path}: 'host' must be a table of [host.\"<url>\"] sections")
    # tomllib keeps tables in file order, which is the order mirrors are tried in.
    hosts = [
        _host_entry(
            _parse_url(raw, where=f"{path} [host.{raw!r}]", plain_http=plain_http),
            dict(table),
            where=f"{path} [host.{raw!r}]",
            base=base,
            server=False,
        )
        for raw, table in mirrors_table.items()
    ]
    server = doc.get("server")
    if server is not None and not isinstance(server, str):
        raise InvalidArgument(f"{path}: 'server' must be a URL string")
    server_url = (
        _parse_url(server, where=f"{path} server", plain_http=plain_http)
        if server
        else _default_url(domain, "http" if plain_http else "https")
    )
    hosts.append(_host_entry(server_url, doc, where=str(path), base=base, server=True))
    return hosts


def load_hosts(
    hosts_dir: Path | None, domain: str, *, plain_http: bool = False
) -> list[HostConfig]:
    """Return the hosts to try for ``domain``, mirrors first and the server last.

    Args:
        hosts_dir: containerd-style ``certs.d`` directory, or ``None`` for none.
        domain: The reference's domain, ``host[:port]``.
        plain_http: Use ``http://`` for hosts given without a scheme. URLs written
            with ``http://`` in a hosts.toml are honoured as the operator wrote them.

    Returns:
        At least one host. Without a hosts.toml that is the domain itself
        (``docker.io`` becomes ``registry-1.docker.io``) with every capability.

    Raises:
        InvalidArgument: The hosts.toml is malformed, or plain HTTP was asked for
            a non-loopback domain that has no hosts.toml to vouch for it.
    """
    path = _host_file(hosts_dir, domain) if hosts_dir is not None else None
    if path is not None:
        hosts = _from_file(path, domain, plain_http=plain_http)
        log.debug("registry hosts for %s from %s: %s", domain, path, [h.url for h in hosts])
        return hosts
    if plain_http and not is_loopback(domain):
        # Credentials and image content would travel unencrypted and unauthenticated
        # over the network; only a hosts.toml written by the operator may ask for that.
        raise InvalidArgument(
            f"plain HTTP to registry {domain} refused: without a hosts.toml entry it is "
            "only allowed for loopback hosts (127.0.0.1, localhost, ::1)"
        )
    return [HostConfig(url=_default_url(domain, "http" if plain_http else "https"))]
