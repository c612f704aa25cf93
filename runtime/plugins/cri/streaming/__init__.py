"""The CRI streaming server: exec, attach and port-forward over SPDY/3.1 and websockets."""

from runtime.plugins.cri.streaming.server import StreamingServer

__all__ = ["StreamingServer"]
