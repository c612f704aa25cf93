"""What a plugin declares (:class:`Registration`) and what it receives (:class:`InitContext`)."""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from msgspec.structs import force_setattr

if TYPE_CHECKING:
    from runtime.core.config import DaemonConfig
    from runtime.core.events import Envelope, Exchange
    from runtime.core.host import PluginSet

__all__ = [
    "PLUGIN_API_VERSION",
    "SUPPORTED_API_VERSIONS",
    "InitContext",
    "PluginConfig",
    "PluginSkipped",
    "Registration",
]

#: The plugin API version this core implements. A plugin declares the version
#: it was built for; one outside :data:`SUPPORTED_API_VERSIONS` is refused.
PLUGIN_API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})

_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$")

T = TypeVar("T")


class PluginConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for plugin config Structs: unknown keys are errors, every field has a default."""


class PluginSkipped(Exception):
    """Raised by a plugin's init when it does not apply here; gives status ``skip``.

    Example: ``raise PluginSkipped("root /var/lib/moorage is not on btrfs")``.
    """

    @property
    def reason(self) -> str:
        """Why the plugin skipped itself."""
        return str(self.args[0]) if self.args else "skipped"


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin, as yielded by a ``moorage_plugins`` hook implementation.

    Attributes:
        type: The plugin type (see :class:`runtime.plugins.types.PluginType`).
        id: The plugin id, unique within its type; the plugin is ``<type>.<id>``.
        init: ``async def init(ctx: InitContext) -> service``; may raise
            :class:`PluginSkipped`.
        requires: Types (``"content"``: every plugin of that type, at least one
            must be running) or full names (``"content.local"``: that one must be
            running) that start before this plugin.
        config: A :class:`PluginConfig` subclass with defaults, or ``None``.
        close: Optional ``async def close(service) -> None`` run at shutdown.
        api_version: The plugin API version the plugin was built for.
        description: One line for ``moorage plugins ls``.
    """

    type: str
    id: str
    init: Callable[[InitContext[Any]], Awaitable[Any]]
    requires: tuple[str, ...] = ()
    config: builtins.type[PluginConfig] | None = None
    close: Callable[[Any], Awaitable[None]] | None = None
    api_version: int = PLUGIN_API_VERSION
    description: str = ""

    def __post_init__(self) -> None:
        for part, what in ((self.type, "type"), (self.id, "id")):
            if not _NAME.match(part):
                raise ValueError(f"plugin {what} {part!r} must match {_NAME.pattern}")
        force_setattr(self, "requires", tuple(self.requires))
        for req in self.requires:
            if req == self.name:
                raise ValueError(f"plugin {self.name} cannot require itself")

    @property
    def name(self) -> str:
        """The plugin's full name, ``<type>.<id>``."""
        return f"{self.type}.{self.id}"

    @classmethod
    def named(
        cls,
        name: str,
        init: Callable[[InitContext[Any]], Awaitable[Any]],
        *,
        requires: tuple[str, ...] = (),
        config: builtins.type[PluginConfig] | None = None,
        close: Callable[[Any], Awaitable[None]] | None = None,
        api_version: int = PLUGIN_API_VERSION,
        description: str = "",
    ) -> Registration:
        """The registration of ``name`` (``"<type>.<id>"``), spelt as requires and configs spell it.

        Raises:
            ValueError: ``name`` has no ``.``, or a part is not a valid name.
        """
        type_, dot, id_ = name.partition(".")
        if not dot:
            raise ValueError(f"plugin name {name!r} must be <type>.<id>")
        return cls(type=type_, id=id_, init=init, requires=requires, config=config, close=close,
                   api_version=api_version, description=description)


class InitContext(msgspec.Struct, Generic[T], kw_only=True):
    """Everything a plugin's init receives.

    Attributes:
        registration: The plugin's own registration.
        config: The plugin's decoded config Struct (defaults if no section).
        root: ``<root>/<type>.<id>``: persistent, created before init.
        state: ``<state>/<type>.<id>``: volatile (tmpfs), created before init.
        daemon: The whole daemon configuration (addresses, top-level dirs).
        plugins: Introspection of the plugin set (used by the API's plugin list).
        events: The event exchange (``events.exchange``), or ``None`` when it is
            not running (tests that start a lone plugin).
    """

    registration: Registration
    config: T
    root: Path
    state: Path
    daemon: DaemonConfig
    plugins: PluginSet
    events: Exchange | None
    _required: Mapping[str, Any] = msgspec.field(default_factory=dict)
    _spawn: Callable[..., Awaitable[Any]] | None = None

    def publish(self, namespace: str, topic: str, event: msgspec.Struct) -> Envelope | None:
        """Publish ``event`` on the exchange; nothing without one (a lone plugin in a test)."""
        return self.events.publish(namespace, topic, event) if self.events is not None else None

    def get(self, name: str) -> Any:
        """The service of a required plugin, by full name (``"content.local"``).

        Raises:
            KeyError: ``name`` is not a running plugin this plugin required.
        """
        return self._required[name]

    def get_by_type(self, type_: str) -> dict[str, Any]:
        """Running services of one type this plugin required, keyed by id."""
        prefix = type_ + "."
        return {n[len(prefix) :]: s for n, s in self._required.items() if n.startswith(prefix)}

    def get_single(self, type_: str) -> Any:
        """The one running service of ``type_``; an error if there is none or several."""
        found = self.get_by_type(type_)
        if len(found) != 1:
            raise LookupError(f"expected one running {type_} plugin, found {sorted(found)}")
        return next(iter(found.values()))

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> Any:
        """Run ``fn(*args, task_status=...)`` in the daemon's task group, as anyio's ``start``.

        The task belongs to this plugin: it is cancelled after the plugin's close
        has run at shutdown. Returns what the task passed to ``task_status.started``.
        """
        if self._spawn is None:
            raise RuntimeError("no task group: the plugin was not started by a PluginHost")
        return await self._spawn(fn, *args, name=name or f"{self.registration.name}")
