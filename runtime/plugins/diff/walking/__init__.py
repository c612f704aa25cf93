"""The ``diff.walking`` plugin: layer apply and compare by walking directory trees.

- :mod:`.apply`: :func:`~.apply.apply_layer` unpacks a (gzip/zstd/plain) layer blob into a
  directory or an overlayfs upperdir, hardened against entries that try to escape it, and
  returns the diffID.
- :mod:`.compare`: :func:`~.compare.write_diff` double-walks two trees and writes the layer
  blob of their differences; :func:`~.compare.write_diff_from_overlay_upper` reads an
  upperdir directly.

The plugin registration (``plugin.py``) only maps configuration onto these functions; the
library modules do not know they are a plugin.
"""
