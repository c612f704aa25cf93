"""The admin API's constants, shared by the server and both clients.

Imports nothing: :mod:`runtime.client.lean` reads it on every hot CLI call,
and the typed client, the API plugin and the daemon's config read it too, so
that a header, the default socket or the API version is written down once.
"""

__all__ = [
    "ADDRESS_ENV",
    "API_VERSION",
    "DEFAULT_ADDRESS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "JSON",
    "LEASE_HEADER",
    "MISSING_IMAGE",
    "NAMESPACE_ENV",
    "NAMESPACE_HEADER",
    "NAME_LABEL",
    "TOKEN_FILE_ENV",
]

#: The admin API's version: the ``/v1`` of every path, and ``api_version`` of ``GET /v1/version``.
API_VERSION = 1

#: Where the daemon listens unless its config says otherwise, and where clients look.
DEFAULT_SOCKET = "/run/moorage/moorage.sock"
#: :data:`DEFAULT_SOCKET` as a client address.
DEFAULT_ADDRESS = f"unix://{DEFAULT_SOCKET}"

#: Environment variables the clients and the CLI read for their defaults.
ADDRESS_ENV = "MOORAGE_ADDRESS"
NAMESPACE_ENV = "MOORAGE_NAMESPACE"
TOKEN_FILE_ENV = "MOORAGE_TOKEN_FILE"

#: The header that carries the namespace of a request.
NAMESPACE_HEADER = "Moorage-Namespace"
#: The namespace of a request without :data:`NAMESPACE_HEADER`.
DEFAULT_NAMESPACE = "default"
#: Header naming the lease that new content, ingests and snapshots join.
LEASE_HEADER = "Moorage-Lease"

#: The label holding the name ``moorage rename`` gave a container; the docker-style
#: verbs find a container by its id, this name or a unique prefix of its id.
NAME_LABEL = "moorage/name"

#: How the NotFound of ``POST /v1/run`` (and ``/v1/run/attach``) with ``image_rootfs``
#: begins when the image is missing: nothing was made, so a client may pull and ask again.
MISSING_IMAGE = "run: no root filesystem for image"

#: The media type of every request and answer body but blobs and streams.
JSON = "application/json"

#: Seconds a client waits on the socket before giving up (``None`` in a call: forever).
DEFAULT_TIMEOUT = 60.0
