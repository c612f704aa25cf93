"""Proxy plugins: each ``[proxy_plugins.<name>]`` section becomes a plugin served elsewhere.

Example::

    [proxy_plugins.stargz]
    type = "snapshotter"
    address = "unix:///run/stargz/moorage.sock"
    timeout = 10.0        # seconds per call (default 10)

gives the plugin ``snapshotter.stargz``. Its init connects a client of the
protocol in ``docs/proxy-protocol.md`` and probes the server once; an
unreachable server makes the plugin's status ``error`` with the reason, and the
daemon carries on. Every call has the section's timeout, so a stalled server
fails its own calls with :class:`~runtime.core.errors.Unavailable` and never
holds up anything else.

The registrations join the discovered ones (see :func:`with_proxies`) with
the source distribution ``proxy``, so ``moorage plugins ls`` shows
``proxy`` as their origin.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from runtime.core.config import ConfigError, DaemonConfig, ProxyPluginConfig
from runtime.core.discovery import Discovery, PluginSource
from runtime.core.registration import InitContext, Registration

__all__ = [
    "CLIENTS",
    "PROXY_DISTRIBUTION",
    "ProxyTarget",
    "proxy_registrations",
    "socket_path",
    "with_proxies",
]

#: The distribution name proxy plugins are listed under.
PROXY_DISTRIBUTION: Final = "proxy"

#: The client of each proxy type, as ``"module:function"`` taking a
#: :class:`ProxyTarget` and returning the connected service. Imported only
#: when such a proxy is configured: the core must not load every client (and
#: aiohttp's client) for daemons that have no proxies.
CLIENTS: Final[dict[str, str]] = {
    "snapshotter": "runtime.plugins.snapshots.proxy.client:connect",
}

_UNIX = "unix://"


class ProxyTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where a proxy plugin is served, as its client needs it.

    Attributes:
        name: The section name, which is the plugin id.
        type: The plugin type served (a key of :data:`CLIENTS`).
        address: The address as configured (``unix:///path.sock``).
        path: The socket path taken from ``address``.
        timeout: Seconds each call (the start probe included) may take.
    """

    name: str
    type: str
    address: str
    path: str
    timeout: float


def socket_path(address: str) -> str | None:
    """The socket path of ``unix:///path.sock`` (or a bare absolute path); None otherwise."""
    path = address[len(_UNIX) :] if address.startswith(_UNIX) else address
    return path if path.startswith("/") else None


def _connector(type_: str) -> Callable[[ProxyTarget], Awaitable[Any]]:
    module, _, function = CLIENTS[type_].partition(":")
    connect: Callable[[ProxyTarget], Awaitable[Any]] = getattr(
        importlib.import_module(module), function
    )
    return connect


def _registration(target: ProxyTarget) -> Registration:
    async def init(ctx: InitContext[Any]) -> Any:
        return await _connector(target.type)(target)

    async def close(service: Any) -> None:
        # Closes the client's connections only: the server's backend belongs
        # to the server, which may serve other daemons.
        await service.close()

    return Registration(
        type=target.type,
        id=target.name,
        init=init,
        close=close,
        description=f"{target.type} served by proxy at {target.address}",
    )


def _target(config: DaemonConfig, name: str, proxy: ProxyPluginConfig) -> ProxyTarget:
    section = f"{config.source}: [proxy_plugins.{name}]"
    if proxy.type not in CLIENTS:
        raise ConfigError(
            f"{section} key 'type': no proxy client for type {proxy.type!r}; "
            f"supported: {', '.join(sorted(CLIENTS))}"
        )
    path = socket_path(proxy.address)
    if path is None:
        raise ConfigError(
            f"{section} key 'address': {proxy.address!r} is not a unix socket address "
            "(unix:///path/to.sock)"
        )
    if not proxy.timeout > 0:
        raise ConfigError(f"{section} key 'timeout': must be a positive number of seconds")
    return ProxyTarget(
        name=name, type=proxy.type, address=proxy.address, path=path, timeout=proxy.timeout
    )


def proxy_registrations(config: DaemonConfig) -> list[tuple[Registration, PluginSource]]:
    """One registration per ``[proxy_plugins.<name>]`` section, in file order.

    Raises:
        ConfigError: An unsupported type, an address that is not a unix
            socket, a non-positive timeout or a name that is no valid plugin
            id; the message names the file, the section and the key.
    """
    found: list[tuple[Registration, PluginSource]] = []
    for name, proxy in config.proxy_plugins.items():
        target = _target(config, name, proxy)
        try:
            registration = _registration(target)
        except ValueError as exc:  # the name is not a valid plugin id
            raise ConfigError(f"{config.source}: [proxy_plugins.{name}] {exc}") from exc
        found.append((registration, PluginSource(PROXY_DISTRIBUTION, "", name, proxy.address)))
    return found


def with_proxies(discovery: Discovery, config: DaemonConfig) -> Discovery:
    """``discovery`` plus the configured proxy plugins, after the installed ones.

    Returns ``discovery`` itself when no proxy is configured.

    Raises:
        ConfigError: See :func:`proxy_registrations`.
    """
    if not config.proxy_plugins:
        return discovery
    return Discovery(
        [*discovery.registrations, *proxy_registrations(config)], list(discovery.failures)
    )
