"""Built-in plugins: each subpackage registers through the ``moorage.plugins`` entry points.

For plugin authors (built-in or third-party), these modules are the contracts:

* ``runtime.plugins.<area>.api`` — what a plugin of that area hands the others:
  records, events and the ``typing.Protocol`` of its service (``content.api``:
  ``NamespacedContent``, ``IngestWriter``, ``Follower``, ``Store``;
  ``snapshots.api``: ``Snapshotter``; ``runtime.api``: ``Runtime``,
  ``AttachStream``; ``containers.api``: ``ContainerStore``; ``network.api``;
  ``metadata.api``: ``Database``, ``ensure_namespace``, ``attach`` for stores
  sharing the metadata database; ``api.api``: ``Route``, ``route_set`` for
  plugins serving HTTP routes).
* ``runtime.plugins.types`` — the plugin types the core orders.
* ``runtime.pkg`` — libraries that are not plugins (mounts, the registry client,
  layer archives, OCI specs, digests); ``runtime.api`` — the wire types.
* ``runtime.core.registration``, ``runtime.core.hookspecs``, ``runtime.core.errors``.

Every other module of a plugin package is that plugin's own: no other plugin
imports it (``tests/core/test_plugin_imports.py`` holds the rule).
"""
