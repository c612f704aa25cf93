"""The running ``cri.v1`` plugin, started without gRPC: gRPC and streaming come when needed.

At start the plugin builds its services on the daemon's, runs the pods'
start-up recovery (:mod:`.recovery`), watches OOM events and binds the CRI
socket (:class:`~runtime.plugins.cri.listener.LazyGrpcSocket`). None of that
imports :mod:`grpc` or protobuf (the pods' code reads the generated messages
through :mod:`.messages`, imported on first use). The gRPC server (:mod:`.server`) is imported
and started when a client first sends on the socket; the streaming server
(exec, attach, port-forward: aiohttp) when the first Exec, Attach or
PortForward asks for a URL.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from runtime.core import errors
from runtime.core.events import Exchange
from runtime.core.registration import InitContext
from runtime.plugins.cri.images import CriImages
from runtime.plugins.cri.listener import RELAY_MAX_AGE, LazyGrpcSocket
from runtime.plugins.cri.pods import Pods
from runtime.plugins.images.api import Images
from runtime.plugins.network.api import Network

__all__ = ["CriServer", "start_cri"]

log = logging.getLogger("moorage.cri")

#: Seconds gRPC gives RPCs under way to finish when the plugin stops.
STOP_GRACE = 2.0


class CriServer:
    """The running plugin: its services, the CRI socket, gRPC and streaming once started."""

    def __init__(self, *, config: Any, pods: Pods, images: CriImages, network: Network,
                 exchange: Exchange, address: Path) -> None:
        self.config = config
        self.pods = pods
        self.images = images
        self.network = network
        self.exchange = exchange
        self.address = address
        self.pod_cidr = ""
        self.socket = LazyGrpcSocket(address, self._start_grpc, self._stop_relay_target)
        #: The ``grpc.aio.Server`` once a client has spoken, else None.
        self.grpc: Any = None
        #: The server of the connections accepted before gRPC started (see
        #: :mod:`.listener`), until none is left.
        self.grpc_relay_target: Any = None
        #: The streaming server once an Exec, Attach or PortForward needed it.
        self.streaming: Any = None
        self._streaming_lock = anyio.Lock()

    async def _start_grpc(self, path: Path, relay_target: Path) -> None:
        # In a worker thread: the event loop (the admin API, the other plugins)
        # need not wait for the import.
        server: Any = await anyio.to_thread.run_sync(
            importlib.import_module, "runtime.plugins.cri.server")
        await self._stop_grpc()  # what a failed attempt may have started
        self.grpc = await server.start_grpc(self, path)
        self.grpc_relay_target = await server.start_grpc(
            self, relay_target, max_connection_age=RELAY_MAX_AGE)

    async def _stop_relay_target(self) -> None:
        if self.grpc_relay_target is not None:
            await self.grpc_relay_target.stop(grace=STOP_GRACE)
            self.grpc_relay_target = None

    async def _stop_grpc(self) -> None:
        servers = [s for s in (self.grpc, self.grpc_relay_target) if s is not None]
        self.grpc = self.grpc_relay_target = None
        async with anyio.create_task_group() as group:
            for server in servers:
                group.start_soon(server.stop, STOP_GRACE)

    async def streaming_server(self) -> Any:
        """The streaming server, started on first use.

        Raises:
            Unavailable: It could not start (its address is taken, say); the
                next call tries again.
        """
        async with self._streaming_lock:
            if self.streaming is None:
                self.streaming = await _start_streaming(self.config, self.pods)
            return self.streaming

    async def close(self) -> None:
        """Stop the gRPC and streaming servers and close the socket; pods keep running."""
        await self.socket.stop_accepting()
        await self._stop_grpc()
        await self.socket.close()
        if self.streaming is not None:
            with contextlib.suppress(Exception):
                await self.streaming.stop()
            self.streaming = None


async def _watch_ooms(pods: Pods, exchange: Exchange, *, task_status: Any) -> None:
    async with exchange.subscribe('topic=="/tasks/oom"', namespace=pods.namespace) as events:
        task_status.started()
        async for envelope in events:
            pods.note_oom(envelope.event.container_id)


async def start_cri(ctx: InitContext[Any]) -> CriServer:
    """Build the services from the required plugins, recover the pods, bind the socket."""
    config = ctx.config
    images_service: Images = ctx.get("images.store")
    snapshotter = images_service.snapshotter(config.snapshotter).name
    images = CriImages(namespace=config.namespace, images=images_service,
                       snapshotter=snapshotter)
    network: Network = ctx.get("network.cni")
    pods = Pods(
        namespace=config.namespace, containers=ctx.get("containers.store"),
        snapshots=ctx.get("service.snapshots"), snapshotter=snapshotter,
        runtimes=ctx.get_by_type("runtime"), network=network, images=images,
        root=ctx.root, state=ctx.state,
        log_root=Path(config.log_root) if config.log_root else ctx.root / "logs",
        cgroup_parent=ctx.daemon.cgroup_parent, infra_binary=config.sandbox_image,
        cni_conf_dir=Path(config.cni_conf_dir) if config.cni_conf_dir else None)
    await pods.load()
    address = Path(config.address) if config.address else Path(ctx.daemon.state) / "cri.sock"
    # Required, so running: the same exchange as ctx.events, typed.
    exchange: Exchange = ctx.get("events.exchange")
    server = CriServer(config=config, pods=pods, images=images, network=network,
                       exchange=exchange, address=address)
    await ctx.start(_watch_ooms, pods, exchange, name="cri.v1 oom watch")
    await ctx.start(server.socket.serve, name="cri.v1 socket")
    log.info("CRI v1 listening on %s (namespace %s); gRPC starts with the first client",
             address, config.namespace)
    return server


async def _start_streaming(config: Any, pods: Pods) -> Any:
    try:
        from runtime.plugins.cri.streaming import StreamingServer  # type: ignore[attr-defined]
    except ImportError as exc:
        log.warning("CRI streaming server not available: Exec, Attach and PortForward "
                    "answer UNAVAILABLE")
        raise errors.Unavailable("the streaming server is not available") from exc
    runtime = pods.runtime_for("")
    streaming = StreamingServer(address=config.stream_address, port=config.stream_port,
                                namespace=config.namespace, runtime=runtime,
                                netns_path=pods.netns_path)
    try:
        await streaming.start()
    except OSError as exc:
        raise errors.Unavailable(
            f"the streaming server cannot listen on {config.stream_address}:"
            f"{config.stream_port}: {exc.strerror or exc}") from exc
    return streaming
