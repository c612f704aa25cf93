"""systemd's readiness protocol (``sd_notify``): ``Type=notify`` units wait for ``READY=1``.

The service manager passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace); outside systemd the variable is unset
and :func:`sd_notify` does nothing.
"""

from __future__ import annotations

import os
import socket

__all__ = ["sd_notify"]


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``...) to the service manager.

    Returns whether a message was sent; a vanished socket is not an error, as
    with libsystemd's ``sd_notify``.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
