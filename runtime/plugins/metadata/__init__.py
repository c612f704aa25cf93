"""The metadata plugin ``metadata.sqlite``: every namespaced record in one SQLite database."""
