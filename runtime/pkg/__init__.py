"""Libraries shared by the core and the plugins."""
