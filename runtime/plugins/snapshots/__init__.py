"""Snapshotters: layered filesystems for images and containers.

For other plugins: import the contract from :mod:`runtime.plugins.snapshots.api`
and mount what it returns with :mod:`runtime.plugins.snapshots.mount`.

Internal to the backends: :mod:`~runtime.plugins.snapshots.storage` (the
SQLite bookkeeping and directory lifecycle they share), and one package per
backend (``overlay``, ``native``) holding ``snapshotter.py`` (the service,
unaware it is a plugin) and ``plugin.py`` (its registration). ``proxy`` holds
the client of snapshotters served by another process (``[proxy_plugins]``,
protocol in ``docs/proxy-protocol.md``); the btrfs snapshotter ships as its own
package, ``contrib/moorage-snapshotter-btrfs``.

Backend authors check their work with the conformance suite in
:mod:`runtime.testing.snapshotter`.
"""
