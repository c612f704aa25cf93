"""An example proxy snapshotter: :mod:`.server` serves any Snapshotter on a unix socket."""

__version__ = "0.1.0"
