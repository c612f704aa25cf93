"""Snapshotters served by another process over a unix socket (``[proxy_plugins.<name>]``).

* :mod:`.protocol`: the messages of the HTTP/JSON protocol, shared by clients
  and servers written in Python; ``docs/proxy-protocol.md`` is its reference.
* :mod:`.client`: :class:`~.client.ProxySnapshotter`, the daemon's side, which
  :mod:`runtime.core.proxy` builds for each configured proxy of type
  ``snapshotter``.

``contrib/moorage-proxy-example`` is a server of this protocol.
"""
