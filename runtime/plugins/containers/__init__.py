"""The container store ``containers.store``: namespaced container records in the metadata db.

A container is metadata only (an id, an image name, a runtime, an OCI spec and
the snapshot holding its root filesystem); running it is the runtime's job.
Other plugins import :mod:`runtime.plugins.containers.api` and nothing else.
"""
