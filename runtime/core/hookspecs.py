"""Hook specifications: the one place a plugin author reads to learn what to provide.

A plugin module is any importable module listed under the ``moorage.plugins``
entry-point group that defines functions decorated with
:data:`runtime.core.hookspecs.hookimpl`. Hooks return data, never coroutines:
the core awaits the ``init`` callables inside the returned registrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from runtime.core.registration import Registration

__all__ = ["PROJECT", "MoorageSpecs", "hookimpl", "hookspec"]

PROJECT = "moorage"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate your hook functions with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT)


class MoorageSpecs:
    """The hooks a Moorage plugin module may implement."""

    @hookspec
    def moorage_plugins(self) -> Iterable[Registration]:  # type: ignore[empty-body]
        """Declare the plugins this module provides.

        Called once at daemon start (and by ``moorage config default``), after
        the module is imported and before any plugin starts. Yield (or return a
        list of) :class:`runtime.core.registration.Registration` records; an
        empty iterable is fine. Do no work here beyond building records: start
        threads, open files or check the host inside ``init``, and raise
        :class:`runtime.core.registration.PluginSkipped` there when the plugin
        does not apply.

        Example::

            from runtime.core.hookspecs import hookimpl
            from runtime.core.registration import PluginConfig, Registration

            class Config(PluginConfig):
                greeting: str = "hello"

            async def init(ctx):
                return Greeter(ctx.config.greeting)

            @hookimpl
            def moorage_plugins():
                yield Registration(type="greeter", id="basic", init=init, config=Config)

        Returns:
            An iterable of registrations; all implementations' results are merged.
        """
