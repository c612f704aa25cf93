"""The plugin ``metrics.prometheus`` and its route set ``api.metrics``: ``GET /v1/metrics``.

* :mod:`.figures` - figures read from the running plugins at scrape time.
* :mod:`.service` - the registry, the request middleware, the GC follower.
* :mod:`.plugin` - the registrations and the config (an optional listener).
"""
