"""Diff plugins: apply layer blobs to snapshots and compute layers from snapshot pairs.

``diff.walking`` is the built-in differ (containerd's "walking" differ): see
:mod:`runtime.plugins.diff.walking`.
"""
