"""The plugin ``gc.scheduler``: mark-and-sweep garbage collection with a bounded pause.

Modules, in the order data flows through them:

* :mod:`.api` - labels, the report, the ``/gc/run`` event, and the ``Source``
  each store provides (the contract).
* :mod:`.labels` - the ``containerd.io/gc.*`` label grammar.
* :mod:`.graph` - nodes, roots and edges, asked of the stores' sources.
* :mod:`.mark` - the mark, and the re-check after concurrent writes.
* :mod:`.changes` - the change log of writes made during a mark.
* :mod:`.locking` - write transactions that time their hold of the writer lock.
* :mod:`.sweep` - the exclusive phase deleting records.
* :mod:`.disk` - removing unreferenced backend objects.
* :mod:`.collector` - one collection, phase by phase.
* :mod:`.scheduler` - when to collect.
* :mod:`.plugin` - the registration and its config.
"""
