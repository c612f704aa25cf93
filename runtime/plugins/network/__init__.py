"""Container networking: the ``network.cni`` plugin and its contract.

Modules:

* :mod:`.api` - port mappings, attachments, modes and the :class:`~.api.Network`
  protocol (the contract; other plugins, the client and the CLI import only it).
* :mod:`.task` - what a runtime does with a network at task create and delete:
  attach, point the OCI spec at the network namespace, write ``/etc/hosts``,
  ``/etc/hostname`` and ``/etc/resolv.conf`` into the bundle.
* :mod:`.cni` - the plugin: CNI configuration lists run against network
  namespaces of its own.
"""
