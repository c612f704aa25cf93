"""The images plugin ``images.store``: image records, pull, push, unpack, import and export.

Other plugins import :mod:`runtime.plugins.images.api` only (records, labels,
the :class:`~runtime.plugins.images.api.ImageConfig` the runtime needs); the
rest of the package is the implementation. :mod:`.registry` is the
distribution client, which knows nothing about the content store.
"""
