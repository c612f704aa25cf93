"""The CRI v1 protobuf messages (``v1/api_pb2``), imported on first use.

An idle daemon with ``cri.v1`` enabled runs the pods' start-up recovery but
answers no RPC until a client connects, and the generated messages with the
protobuf runtime cost it some 6 MiB of RSS (``api_pb2``'s descriptors, upb's
extension module; ``json_format`` more). So the pods' modules name the
messages through :data:`pb`, which imports ``api_pb2`` when one of its
attributes is first read: once gRPC serves (its server module imports the
messages in a worker thread as it starts) or a message is first built.
``json_format`` is imported by the functions that use it, for the same reason.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["pb"]

_MODULE = "runtime.plugins.cri.v1.api_pb2"


class _LazyMessages:
    """``api_pb2``'s attributes, the module imported when the first is read.

    Each attribute read is kept on the instance, so later reads are plain
    attribute lookups. ``importlib.import_module`` holds the import lock, so
    threads reading the first attributes at once get one module.
    """

    def __getattr__(self, name: str) -> Any:
        value = getattr(importlib.import_module(_MODULE), name)
        setattr(self, name, value)
        return value


if TYPE_CHECKING:
    from runtime.plugins.cri.v1 import api_pb2 as pb
else:
    pb = _LazyMessages()
