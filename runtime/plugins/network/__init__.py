"""Container networking: the ``network.cni`` plugin and its contract.

Modules:

* :mod:`.api` - port mappings, attachments, modes and the :class:`~.api.Network`
  protocol (the contract; other plugins, the client and the CLI import only it).
* :mod:`.task` - what a runtime does with a network at task create and delete:
  attach, point the OCI spec at the network namespace, write ``/etc/hosts``,
  ``/etc/hostname`` and ``/etc/resolv.conf`` into the bundle.
* :mod:`.etc_files` - the ``/etc/hosts`` and ``/etc/resolv.conf`` a container
  gets (a task's and a CRI pod sandbox's).

:mod:`.api` re-exports what other plugins use of :mod:`.task` and :mod:`.etc_files`.
* :mod:`.cni` - the plugin: CNI configuration lists run against network
  namespaces of its own.
"""

# .task imports the records of .api, and .api re-exports .task: loading .api
# first, whichever module is asked for, keeps that cycle from failing.
from runtime.plugins.network import api as api
