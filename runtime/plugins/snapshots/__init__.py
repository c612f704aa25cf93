"""Snapshotters: layered filesystems for images and containers.

For other plugins: import the contract from :mod:`runtime.plugins.snapshots.api`
and mount what it returns with :mod:`runtime.pkg.mount`.

For backend authors, ours and third parties': :mod:`~runtime.plugins.snapshots.backend`
(:class:`~runtime.plugins.snapshots.backend.MetaStoreSnapshotter`, the base
class that does the bookkeeping; a backend fills and mounts directories) over
:mod:`~runtime.plugins.snapshots.storage` (the SQLite records and directory
lifecycle), :mod:`~runtime.plugins.snapshots.record` and
:mod:`~runtime.plugins.snapshots.disk`. One package per backend (``overlay``,
``native``) holds ``snapshotter.py`` (the service, unaware it is a plugin) and
``plugin.py`` (its registration). ``proxy`` holds
the client of snapshotters served by another process (``[proxy_plugins]``,
protocol in ``docs/proxy-protocol.md``); the btrfs snapshotter ships as its own
package, ``contrib/moorage-snapshotter-btrfs``.

Backend authors check their work with the conformance suite in
:mod:`runtime.testing.snapshotter`.
"""
