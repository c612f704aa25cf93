"""The event exchange plugin, ``events.exchange``."""
