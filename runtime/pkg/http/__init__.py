"""A small asyncio HTTP/1.1 and WebSocket server in the style of ``aiohttp.web``.

The daemon's admin API used aiohttp's server; importing ``aiohttp.web`` was
most of the daemon's start (about 0.3 s of CPU) and some 7 MB of its idle
memory, for the client, connector and parser machinery the server side never
uses. This package serves what the API needs with the standard library (and
msgspec Structs for its records, as everywhere in Moorage):
HTTP/1.1 with keep-alive, Content-Length and chunked bodies, streamed
responses, a router with aiohttp's ``{name}`` / ``{name:regex}`` patterns and
its 404/405 rules, middlewares, and server-side websockets (RFC 6455).

Route modules import :mod:`runtime.pkg.http.web` as ``web`` and keep aiohttp's
names (``web.Request``, ``web.StreamResponse``, ``web.WebSocketResponse``...).
Only what the API uses is implemented.
"""
