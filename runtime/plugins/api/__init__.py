"""The admin HTTP API: the ``server.http`` listener and the ``api.*`` route sets it mounts.

``types`` holds the wire Structs and imports nothing heavy, so the client can use it.
"""
