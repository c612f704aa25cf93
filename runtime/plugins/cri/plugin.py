"""Registration of ``cri.v1``: the Kubernetes CRI v1 runtime and image services over gRPC.

The plugin's module imports neither :mod:`grpc` nor the generated stubs: the
daemon imports every plugin's registration at start-up, and one with
``cri.v1`` disabled must not pay for them. :func:`init` builds the services
and binds the CRI socket (:mod:`.service`), still without gRPC: that is
imported and started when the first client sends on the socket
(:mod:`.listener`), inside the daemon's asyncio event loop (``grpc.aio`` runs
only on asyncio; see :func:`runtime.core.daemon.run_daemon`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import msgspec

from runtime.core.config import AbsolutePath
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration

if TYPE_CHECKING:
    from runtime.plugins.cri.service import CriServer

__all__ = ["CriConfig", "moorage_plugins"]


class CriConfig(PluginConfig):
    """``[plugins."cri.v1"]``.

    Attributes:
        enabled: Serve the CRI. Off by default. Enabled, the plugin costs an idle
            daemon a few MiB (the pods' code) until a client connects; gRPC
            and protobuf (some 19 MiB more, and libstdc++) are loaded when
            one first sends on the socket.
        address: The CRI socket (a path); default ``<state>/cri.sock``
            (``/run/moorage/cri.sock``).
        namespace: The Moorage namespace holding the pods, containers and
            images the kubelet manages.
        sandbox_image: The infra process of a pod sharing its PID namespace
            (others run none): ``catatonit`` (Debian's, run
            from a root filesystem the plugin builds) or the absolute path of
            another static binary that waits for signals as PID 1.
        cni_conf_dir: Where the pod network's configuration is: the first usable
            ``.conflist``/``.conf``/``.json`` file in name order (as containerd's
            CRI), read at each RunPodSandbox and Status, so a file added later is
            used without a restart. Empty: ``network.cni``'s default network.
        log_root: Where logs go when a pod gives no ``log_directory``;
            default ``<root>/logs``.
        stream_address: The streaming server's address (exec, attach, port-forward).
        stream_port: Its port; 0 picks a free one.
        cgroup_driver: ``cgroupfs`` (the only one this host supports).
        max_message_size: Largest gRPC message accepted or sent (16 MiB, as kubelet's).
        snapshotter: Where containers' root filesystems are prepared; empty:
            the images service's default.
    """

    enabled: bool = False
    address: str = ""
    namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$")] = \
        "k8s.io"
    sandbox_image: str = "catatonit"
    cni_conf_dir: AbsolutePath = ""
    log_root: str = ""
    stream_address: str = "127.0.0.1"
    stream_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    cgroup_driver: Annotated[str, msgspec.Meta(pattern=r"^cgroupfs$")] = "cgroupfs"
    max_message_size: Annotated[int, msgspec.Meta(ge=1 << 20)] = 16 << 20
    snapshotter: str = ""


async def init(ctx: InitContext[CriConfig]) -> CriServer:
    """Build the CRI services on the running ones and listen on the socket."""
    if not ctx.config.enabled:
        raise PluginSkipped('off: set enabled = true in [plugins."cri.v1"]')
    # Imported here, not at module level: see the module docstring.
    from runtime.plugins.cri.service import start_cri

    return await start_cri(ctx)


async def close(service: CriServer) -> None:
    """Stop serving; pods and containers keep running (as containerd's do)."""
    await service.close()


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The CRI v1 front end."""
    yield Registration(
        type="cri",
        id="v1",
        init=init,
        close=close,
        config=CriConfig,
        requires=("containers.store", "images.store", "service.snapshots", "runtime",
                  "network.cni", "events.exchange"),
        description="Kubernetes CRI v1 runtime and image services (gRPC, unix socket)",
    )
