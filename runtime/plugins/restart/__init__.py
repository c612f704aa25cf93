"""``containers.restart``: restart policies and auto-removal of containers, kept by the daemon."""
