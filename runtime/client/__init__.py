"""The typed client of the admin API.

:class:`Client` is synchronous, built on the standard library's HTTP client
(no aiohttp import: the CLI starts fast); it speaks to ``unix:///path`` or
``http://host:port`` addresses. Both names resolve on first use, so that
``runtime.client.lean`` (the CLI's hot commands) does not import msgspec
through this package.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from runtime.client.sync import Client, default_address

__all__ = ["Client", "default_address"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runtime.client import sync

        return getattr(sync, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
