"""The plugin host: configuration, discovery, graph, events and the daemon."""
