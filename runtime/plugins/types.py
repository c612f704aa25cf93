"""The plugin types the core knows how to order; third parties may add their own strings."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PluginType"]


class PluginType(StrEnum):
    """Built-in plugin types. A plugin is addressed as ``<type>.<id>``."""

    EVENTS = "events"  # the event exchange
    METADATA = "metadata"  # the SQLite store of namespaced records
    CONTENT = "content"  # the content-addressed blob store
    SNAPSHOTTER = "snapshotter"  # layered filesystems (overlayfs, native, btrfs...)
    DIFF = "diff"  # layer apply and compare
    LEASES = "leases"  # lease manager
    IMAGES = "images"  # image store, pull, push, import, export
    RUNTIME = "runtime"  # OCI runtimes (runc, crun) and task supervision
    CONTAINERS = "containers"  # container records
    GC = "gc"  # garbage collection scheduler
    NETWORK = "network"  # CNI attachments
    METRICS = "metrics"  # Prometheus exposition
    API = "api"  # HTTP route sets mounted by the API server
    SERVER = "server"  # listeners (the admin HTTP server)
    SERVICE = "service"  # namespaced services over backends (snapshots)
    CRI = "cri"  # the Kubernetes CRI front end (gRPC)
