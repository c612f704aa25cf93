"""The plugin ``service.snapshots``: namespaced snapshots over every snapshotter backend."""
