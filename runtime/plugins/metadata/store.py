"""The service of ``metadata.sqlite``: the database and the stores built on it."""

from __future__ import annotations

from runtime.plugins.metadata.api import Publish
from runtime.plugins.metadata.db import Database
from runtime.plugins.metadata.leases import LeaseStore
from runtime.plugins.metadata.namespaces import NamespaceStore

__all__ = ["MetadataStore"]


class MetadataStore:
    """Entry point for other plugins: ``store.db`` and one store per record kind."""

    def __init__(self, db: Database, publish: Publish) -> None:
        self.db = db
        self.publish = publish
        self.namespaces = NamespaceStore(db, publish)
        self.leases = LeaseStore(db, publish)

    def close(self) -> None:
        """Close the database."""
        self.db.close()
