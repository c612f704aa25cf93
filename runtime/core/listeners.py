"""The API's unix socket, bound before the plugins start.

``moorage daemon`` binds and listens on ``[api] address`` right after it has
read its configuration and taken the state lock, before it imports aiohttp and
the plugins (about 0.3 s of CPU). From then on a client's ``connect`` succeeds
and its request waits in the socket's backlog until the API server, started
last, takes the socket over (:func:`take`) and answers it: a client started
alongside the daemon (a unit ordered after it, a script) waits instead of
failing with "no such file" or "connection refused", as with systemd's socket
activation. Nothing is answered before every plugin has started, so no client
sees a half-started daemon.

The module is imported by the daemon's entry point before anything heavy:
it needs only ``os``, ``socket`` and ``stat``.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from runtime.core.errors import InvalidArgument

__all__ = ["BACKLOG", "bind_early", "bind_unix", "close_untaken", "take"]

#: Connections the kernel queues before the server accepts them (aiohttp's own default).
BACKLOG = 128

#: ``sun_path``'s size on Linux, the terminating NUL included.
_SUN_PATH_MAX = 108

_bound: dict[str, socket.socket] = {}


def bind_unix(path: Path, *, backlog: int = BACKLOG) -> socket.socket:
    """A listening unix socket at ``path`` (mode 0660); a stale socket file is replaced.

    Raises:
        InvalidArgument: ``path`` exists and is not a socket.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise InvalidArgument(f"{path} exists and is not a socket")
        # The state lock guarantees that no live daemon owns it.
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under a temporary name, then renamed: a client that
    # sees the path can connect at once (between bind and listen it would be
    # refused).
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    if len(os.fsencode(staging)) >= _SUN_PATH_MAX:
        staging = path  # no room for a longer name: bind in place
    old_umask = os.umask(0o117)
    try:
        staging.unlink(missing_ok=True)
        sock.bind(str(staging))
        os.chmod(staging, 0o660)
        sock.listen(backlog)
        if staging != path:
            os.rename(staging, path)
    except BaseException:
        sock.close()
        if staging != path:
            staging.unlink(missing_ok=True)
        raise
    finally:
        os.umask(old_umask)
    return sock


def bind_early(path: Path) -> None:
    """Bind ``path`` now for the API server to :func:`take` when it starts."""
    key = str(path)
    if key not in _bound:
        _bound[key] = bind_unix(path)


def take(path: Path) -> socket.socket | None:
    """The socket :func:`bind_early` bound at ``path`` (handed over once), or None."""
    return _bound.pop(str(path), None)


def close_untaken() -> None:
    """Close (and remove) what no server took: the daemon failed to start."""
    while _bound:
        key, sock = _bound.popitem()
        sock.close()
        try:
            if stat.S_ISSOCK(os.lstat(key).st_mode):
                os.unlink(key)
        except OSError:
            pass
