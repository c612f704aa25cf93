"""Reliability suites: crash points, injected faults, hostile input, the API's doors, load.

Helpers shared by the suites:

* :mod:`.store_check` - :func:`~.store_check.check_store`, the consistency checker run
  after every kill;
* :mod:`.crash` - the crash rig (a daemon armed with fault points, restarted after each
  kill) and the scenarios it drives;
* :mod:`.fake_registry` - a small aiohttp registry serving in-memory images, which can
  misbehave on purpose;
* :mod:`.blobs` - images and layer tars built in memory, hostile ones included.
"""
