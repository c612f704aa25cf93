"""The native snapshotter: each snapshot is a full copy of its parent, bind-mounted.

Slow and space-hungry, but it works on any filesystem, which makes it the
fallback and the reference backend. :mod:`.snapshotter` holds
:class:`~.snapshotter.NativeSnapshotter`; :mod:`.plugin` registers it as
``snapshotter.native``.
"""
