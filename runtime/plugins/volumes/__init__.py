"""``volumes.local``: named volumes, directories under the plugin's root, per namespace."""
