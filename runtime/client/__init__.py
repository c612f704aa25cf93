"""The typed client of the admin API.

:class:`Client` is synchronous, built on the standard library's HTTP client
(no aiohttp import: the CLI starts fast); it speaks to ``unix:///path`` or
``http://host:port`` addresses.
"""

from runtime.client.sync import Client, default_address

__all__ = ["Client", "default_address"]
