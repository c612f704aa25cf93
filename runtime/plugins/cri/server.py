"""The gRPC server of ``cri.v1``: RuntimeService and ImageService on a unix socket.

Imported when the first CRI client sends on the socket, not when the plugin
starts (it imports :mod:`grpc`; see :mod:`.listener`). Every handler
runs under :func:`_guard`, the one place Moorage's errors become gRPC status
codes (:data:`STATUS_CODES`). RPCs the plugin does not implement answer
UNIMPLEMENTED, which the kubelet and critest accept for the ``Stream*``
variants, checkpointing and the metrics calls.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import grpc
import msgspec

from runtime import __version__
from runtime.core import errors
from runtime.plugins.cri.v1 import api_pb2 as pb
from runtime.plugins.cri.v1 import api_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from runtime.plugins.cri.service import CriServer

__all__ = ["STATUS_CODES", "start_grpc", "status_code"]

log = logging.getLogger("moorage.cri")

#: The CRI API version this plugin serves.
RUNTIME_API_VERSION = "v1"
RUNTIME_NAME = "moorage"

#: Moorage's error classes -> gRPC status codes (most specific first).
STATUS_CODES: tuple[tuple[type[errors.MoorageError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.NotImplementedYet, grpc.StatusCode.UNIMPLEMENTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The status code a handler's exception answers with."""
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, msgspec.ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _guard(fn: F) -> F:
    """Answer a handler's error with its status code and message; log the unexpected."""

    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except (errors.MoorageError, msgspec.ValidationError, ValueError) as exc:
            code = status_code(exc)
            message = exc.message if isinstance(exc, errors.MoorageError) else str(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("CRI %s failed", fn.__name__)
            await context.abort(code, message)
        except OSError as exc:
            log.exception("CRI %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__}: {exc}")

    return handler  # type: ignore[return-value]


class RuntimeService(pb_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    """``runtime.v1.RuntimeService``."""

    def __init__(self, server: CriServer) -> None:
        self.server = server
        self.pods = server.pods

    @_guard
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    @_guard
    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        network = await anyio.to_thread.run_sync(self.pods.pod_network)
        net = pb.RuntimeCondition(type="NetworkReady", status=network is not None)
        if network is None:
            net.reason = "NetworkPluginNotReady"
            net.message = f"no usable CNI network configuration in {self.pods.network_conf_dir}"
        response = pb.StatusResponse()
        response.status.conditions.extend([
            pb.RuntimeCondition(type="RuntimeReady", status=True), net])
        for name in ("", *sorted(self.pods.runtimes)):
            handler = response.runtime_handlers.add(name=name)
            handler.features.recursive_read_only_mounts = \
                await self.pods.supports_recursive_read_only(name)
            handler.features.user_namespaces = await self.pods.supports_user_namespaces(name)
        # ContainerConfig's SupplementalGroupsPolicy Strict is honoured, and
        # ContainerStatus reports the groups the process runs with.
        response.features.supplemental_groups_policy = True
        if request.verbose:
            response.info["config"] = msgspec.json.encode(self.server.config).decode()
        return response

    @_guard
    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest,
                            context: Any) -> pb.RuntimeConfigResponse:
        response = pb.RuntimeConfigResponse()
        response.linux.cgroup_driver = pb.CGROUPFS
        return response

    @_guard
    async def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                                  context: Any) -> pb.UpdateRuntimeConfigResponse:
        # The pod CIDR is the CNI config's business here; accepted and remembered.
        self.server.pod_cidr = request.runtime_config.network_config.pod_cidr
        return pb.UpdateRuntimeConfigResponse()

    @_guard
    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest,
                            context: Any) -> pb.RunPodSandboxResponse:
        return pb.RunPodSandboxResponse(pod_sandbox_id=await self.pods.run_sandbox(request))

    @_guard
    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest,
                             context: Any) -> pb.StopPodSandboxResponse:
        await self.pods.stop_sandbox(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    @_guard
    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                               context: Any) -> pb.RemovePodSandboxResponse:
        await self.pods.remove_sandbox(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    @_guard
    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                               context: Any) -> pb.PodSandboxStatusResponse:
        import time

        status = await self.pods.sandbox_status(request.pod_sandbox_id)
        response = pb.PodSandboxStatusResponse(status=status, timestamp=time.time_ns())
        if request.verbose:
            response.info["info"] = await self.pods.verbose_info(status.id, "sandbox")
        containers = await self.pods.list_containers(pb.ContainerFilter(
            pod_sandbox_id=status.id))
        for container in containers:
            with contextlib.suppress(errors.NotFound):
                response.containers_statuses.append(
                    await self.pods.container_status(container.id))
        return response

    @_guard
    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest,
                             context: Any) -> pb.ListPodSandboxResponse:
        filter_ = request.filter if request.HasField("filter") else None
        return pb.ListPodSandboxResponse(items=await self.pods.list_sandboxes(filter_))

    @_guard
    async def CreateContainer(self, request: pb.CreateContainerRequest,
                              context: Any) -> pb.CreateContainerResponse:
        return pb.CreateContainerResponse(
            container_id=await self.pods.create_container(request))

    @_guard
    async def StartContainer(self, request: pb.StartContainerRequest,
                             context: Any) -> pb.StartContainerResponse:
        await self.pods.start_container(request.container_id)
        return pb.StartContainerResponse()

    @_guard
    async def StopContainer(self, request: pb.StopContainerRequest,
                            context: Any) -> pb.StopContainerResponse:
        await self.pods.stop_container(request.container_id, int(request.timeout))
        return pb.StopContainerResponse()

    @_guard
    async def RemoveContainer(self, request: pb.RemoveContainerRequest,
                              context: Any) -> pb.RemoveContainerResponse:
        await self.pods.remove_container(request.container_id)
        return pb.RemoveContainerResponse()

    @_guard
    async def ListContainers(self, request: pb.ListContainersRequest,
                             context: Any) -> pb.ListContainersResponse:
        filter_ = request.filter if request.HasField("filter") else None
        return pb.ListContainersResponse(containers=await self.pods.list_containers(filter_))

    @_guard
    async def ContainerStatus(self, request: pb.ContainerStatusRequest,
                              context: Any) -> pb.ContainerStatusResponse:
        response = pb.ContainerStatusResponse(
            status=await self.pods.container_status(request.container_id))
        if request.verbose:
            response.info["info"] = await self.pods.verbose_info(response.status.id, "container")
        return response

    @_guard
    async def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                       context: Any) -> pb.UpdateContainerResourcesResponse:
        await self.pods.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    @_guard
    async def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                                 context: Any) -> pb.ReopenContainerLogResponse:
        await self.pods.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    @_guard
    async def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        return await self.pods.exec_sync(request.container_id, list(request.cmd),
                                         int(request.timeout))

    @_guard
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        if not request.cmd:
            raise errors.InvalidArgument("exec needs a command")
        if not (request.stdin or request.stdout or request.stderr):
            raise errors.InvalidArgument("one of stdin, stdout and stderr must be set")
        container_id = await self.pods.running_container(request.container_id)
        streaming = await self.server.streaming_server()
        url = streaming.exec_url(container_id, list(request.cmd), tty=request.tty,
                                 stdin=request.stdin, stdout=request.stdout,
                                 stderr=request.stderr)
        return pb.ExecResponse(url=url)

    @_guard
    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        container_id = await self.pods.running_container(request.container_id)
        streaming = await self.server.streaming_server()
        url = streaming.attach_url(container_id, tty=request.tty, stdin=request.stdin,
                                   stdout=request.stdout, stderr=request.stderr)
        return pb.AttachResponse(url=url)

    @_guard
    async def PortForward(self, request: pb.PortForwardRequest,
                          context: Any) -> pb.PortForwardResponse:
        sandbox_id = await self.pods.known_sandbox(request.pod_sandbox_id)
        streaming = await self.server.streaming_server()
        url = streaming.portforward_url(sandbox_id, list(request.port))
        return pb.PortForwardResponse(url=url)

    @_guard
    async def ContainerStats(self, request: pb.ContainerStatsRequest,
                             context: Any) -> pb.ContainerStatsResponse:
        return pb.ContainerStatsResponse(
            stats=await self.pods.container_stats(request.container_id))

    @_guard
    async def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                                 context: Any) -> pb.ListContainerStatsResponse:
        filter_ = request.filter if request.HasField("filter") else None
        return pb.ListContainerStatsResponse(
            stats=await self.pods.list_container_stats(filter_))

    @_guard
    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest,
                              context: Any) -> pb.PodSandboxStatsResponse:
        return pb.PodSandboxStatsResponse(
            stats=await self.pods.sandbox_stats(request.pod_sandbox_id))

    @_guard
    async def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                                  context: Any) -> pb.ListPodSandboxStatsResponse:
        filter_ = request.filter if request.HasField("filter") else None
        return pb.ListPodSandboxStatsResponse(
            stats=await self.pods.list_sandbox_stats(filter_))

    @_guard
    async def ListMetricDescriptors(self, request: pb.ListMetricDescriptorsRequest,
                                    context: Any) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=self.pods.metric_descriptors())

    @_guard
    async def ListPodSandboxMetrics(self, request: pb.ListPodSandboxMetricsRequest,
                                    context: Any) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self.pods.list_pod_metrics())

    async def GetContainerEvents(self, request: pb.GetEventsRequest, context: Any) -> Any:
        try:
            async for event in self.pods.container_events(self.server.exchange):
                yield event
        except errors.MoorageError as exc:
            await context.abort(status_code(exc), exc.message)


class ImageService(pb_grpc.ImageServiceServicer):  # type: ignore[misc]
    """``runtime.v1.ImageService``."""

    def __init__(self, server: CriServer) -> None:
        self.images = server.images

    @_guard
    async def ListImages(self, request: pb.ListImagesRequest,
                         context: Any) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            found = await self.images.resolve(wanted)
            images = [found] if found else []
        else:
            images = await self.images.all()
        return pb.ListImagesResponse(images=[i.to_pb() for i in images])

    @_guard
    async def ImageStatus(self, request: pb.ImageStatusRequest,
                          context: Any) -> pb.ImageStatusResponse:
        found = await self.images.resolve(request.image.image)
        # An unknown image is an empty answer, not an error (the kubelet pulls then).
        if found is None:
            return pb.ImageStatusResponse()
        response = pb.ImageStatusResponse(image=found.to_pb())
        if request.verbose:
            response.info["info"] = await self.images.verbose_info(found)
        return response

    @_guard
    async def PullImage(self, request: pb.PullImageRequest,
                        context: Any) -> pb.PullImageResponse:
        remaining = context.time_remaining()
        return pb.PullImageResponse(image_ref=await self.images.pull(request, remaining))

    @_guard
    async def RemoveImage(self, request: pb.RemoveImageRequest,
                          context: Any) -> pb.RemoveImageResponse:
        await self.images.remove(request.image.image)
        return pb.RemoveImageResponse()

    @_guard
    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest,
                          context: Any) -> pb.ImageFsInfoResponse:
        return await self.images.fs_info()


def _answer_unimplemented(service: type, base: type) -> None:
    """Give ``service`` a quiet UNIMPLEMENTED handler for each RPC of ``base`` it lacks.

    The generated base methods raise NotImplementedError, which grpc logs at error level
    with a traceback on every call; a kubelet polls some of them (the pod metrics).
    """
    for name, method in vars(base).items():
        if name.startswith("_") or not callable(method) or name in vars(service):
            continue

        async def unimplemented(self: Any, request: Any, context: Any, rpc: str = name) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not implemented")

        setattr(service, name, unimplemented)


_answer_unimplemented(RuntimeService, pb_grpc.RuntimeServiceServicer)
_answer_unimplemented(ImageService, pb_grpc.ImageServiceServicer)


async def start_grpc(cri: CriServer, path: Path, *,
                     max_connection_age: float | None = None) -> grpc.aio.Server:
    """The RuntimeService and ImageService of ``cri`` served on ``path`` (a unix socket).

    Args:
        cri: The running plugin (its pods, images, config).
        path: Where to listen; gRPC replaces a stale socket there.
        max_connection_age: Seconds after which each connection is sent a
            GOAWAY (its RPCs under way finish; the client reconnects); None:
            connections live as long as their clients keep them.
    """
    limit = cri.config.max_message_size
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]
    if max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age * 1000)))
    server = grpc.aio.server(options=options)
    add_runtime: Any = pb_grpc.add_RuntimeServiceServicer_to_server
    add_image: Any = pb_grpc.add_ImageServiceServicer_to_server
    add_runtime(RuntimeService(cri), server)
    add_image(ImageService(cri), server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server
