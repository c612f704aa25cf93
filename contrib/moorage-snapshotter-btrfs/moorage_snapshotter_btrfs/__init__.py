"""A Moorage snapshotter on btrfs subvolumes.

* :mod:`.snapshotter`: :class:`~.snapshotter.BtrfsSnapshotter`, which does not
  know it is a plugin.
* :mod:`.plugin`: the registration ``snapshotter.btrfs`` (config in,
  snapshotter out), listed under the ``moorage.plugins`` entry-point group.
* :mod:`.btrfs`: the few ``btrfs`` commands used, with errors translated.
* :mod:`.testing`: a loop-mounted btrfs filesystem for tests.
"""

__version__ = "0.1.0"
