"""The overlayfs snapshotter: each snapshot is one overlay layer, parents are lowerdirs.

:mod:`.snapshotter` holds :class:`~.snapshotter.OverlaySnapshotter`, usable on
its own; :mod:`.plugin` registers it as ``snapshotter.overlayfs``.
"""
