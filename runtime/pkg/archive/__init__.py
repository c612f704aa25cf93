"""Archive code several plugins use: layer decompression and forward-only tar reading."""
