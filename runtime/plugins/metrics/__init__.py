"""The plugin ``metrics.prometheus`` and its route set ``api.metrics``: ``GET /v1/metrics``.

* :mod:`.figures` - figures read from the running plugins at scrape time.
* :mod:`.series` - counters and histograms that import ``prometheus_client`` only when scraped.
* :mod:`.service` - the request middleware, the GC follower, the exposition.
* :mod:`.plugin` - the registrations and the config (an optional listener).
"""
