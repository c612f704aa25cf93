"""Shared CRI fixtures: a daemon serving ``cri.v1``, gRPC stubs on its socket, pods.

Used by tests/cri/ and tests/cri/streaming/. Everything is real: the daemon
runs runc under conmon, pods get a CNI bridge network, images come from the
loopback registry (built from busybox-static by the session fixtures).

* ``cri_daemon`` - a running :class:`~tests.fixtures.daemon.Daemon` with
  ``cri.v1`` on ``<state>/cri.sock`` (attribute ``cri_socket``).
* ``cri`` - a :class:`CriClient`: ``.runtime`` and ``.images`` are the
  generated ``RuntimeServiceStub`` / ``ImageServiceStub`` (synchronous
  grpc channel), plus helpers ``pull``, ``run_pod``, ``create_container``,
  ``run_container`` and ``exec``.
* ``cri_image`` - the busybox image (sh, nc, httpd, sleep, top...) pushed to
  the loopback registry: ``127.0.0.1:PORT/cri/busybox:1``; pulled by
  ``cri.pull(cri_image)`` or implicitly by ``run_container``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import ImageLayout
from tests.fixtures.registry import Registry
from tests.fixtures.system import require_binary, require_root

CRI_NAMESPACE = "k8s.io"
CRI_IMAGE_TAG = "cri/busybox:1"


def cri_config(extra: str = "") -> str:
    """The daemon config that enables ``cri.v1`` (plus ``extra`` keys for its table)."""
    return '[plugins."cri.v1"]\nenabled = true\n' + extra


@contextlib.contextmanager
def running_cri_daemon(path: Path, config: str | None = None) -> Iterator[Any]:
    """A daemon in ``path`` serving ``cri.v1`` (``config``: the whole TOML, default
    :func:`cri_config`), once its socket answers; attribute ``cri_socket``."""
    require_root()
    for binary in ("runc", "conmon", "catatonit"):
        require_binary(binary)
    from tests.fixtures.daemon import Daemon

    with Daemon(path, cri_config() if config is None else config) as daemon:
        daemon.cri_socket = daemon.state / "cri.sock"  # type: ignore[attr-defined]
        wait_for_socket(daemon)
        yield daemon


@pytest.fixture
def cri_daemon(tmp_path: Path) -> Iterator[Any]:
    """A running daemon with ``cri.v1`` serving on ``<state>/cri.sock``."""
    with running_cri_daemon(tmp_path / "daemon") as daemon:
        yield daemon


def wait_for_socket(daemon: Any, timeout: float = 30.0) -> None:
    """Wait until ``cri.v1`` listens (the API answers before every plugin started)."""
    deadline = time.monotonic() + timeout
    # The file appears at bind(), before listen(): wait until a connect succeeds.
    while not (daemon.cri_socket.exists() and stat.S_ISSOCK(daemon.cri_socket.stat().st_mode)
               and _accepts(daemon.cri_socket)):
        if time.monotonic() > deadline or not daemon.running:
            raise AssertionError(f"cri.v1 did not start:\n{daemon.log()[-3000:]}")
        time.sleep(0.05)


def restart_cri_daemon(daemon: Any) -> None:
    """Stop the daemon (SIGTERM), start it again on the same state, and wait for ``cri.v1``.

    The socket file is removed in between so the wait cannot see the old one.
    """
    daemon.stop()
    daemon.cri_socket.unlink(missing_ok=True)
    daemon.start()
    wait_for_socket(daemon)


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def cri_image(registry: Registry, busybox_layout: ImageLayout) -> str:
    """The busybox image in the loopback registry, as the CRI pulls it."""
    return registry.push_layout(busybox_layout.path, busybox_layout.ref_name, CRI_IMAGE_TAG)


class CriClient:
    """The generated CRI client stubs on one channel, with helpers for tests."""

    def __init__(self, socket_path: Path, log_dir: Path) -> None:
        import grpc

        from runtime.plugins.cri.v1 import api_pb2 as pb
        from runtime.plugins.cri.v1 import api_pb2_grpc as pb_grpc

        self.pb = pb
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)
        self.log_dir = log_dir

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def pull(self, image: str, **kw: Any) -> str:
        """PullImage; returns ``image_ref`` (the image id)."""
        response = self.images.PullImage(
            self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image)), **kw)
        return str(response.image_ref)

    def pod_config(self, name: str = "", *, hostname: str = "",
                   labels: Mapping[str, str] | None = None, **linux: Any) -> Any:
        """A PodSandboxConfig with unique metadata and a log directory."""
        pb = self.pb
        name = name or f"pod-{uuid.uuid4().hex[:8]}"
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="default",
                                           uid=uuid.uuid4().hex, attempt=0),
            hostname=hostname, log_directory=str(self.log_dir / name),
            labels=dict(labels or {}))
        for key, value in linux.items():
            getattr(config.linux, key).CopyFrom(value) if hasattr(value, "CopyFrom") \
                else setattr(config.linux, key, value)
        return config

    def run_pod(self, config: Any = None, **kw: Any) -> tuple[str, Any]:
        """RunPodSandbox; returns ``(sandbox id, its config)``."""
        config = config if config is not None else self.pod_config(**kw)
        response = self.runtime.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config))
        return str(response.pod_sandbox_id), config

    def container_config(self, image: str, command: Sequence[str] = ("sleep", "3600"), *,
                         name: str = "", **fields: Any) -> Any:
        """A ContainerConfig running ``command`` with a log file."""
        pb = self.pb
        name = name or f"c-{uuid.uuid4().hex[:8]}"
        return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                                  image=pb.ImageSpec(image=image), command=list(command),
                                  log_path=f"{name}.log", **fields)

    def create_container(self, sandbox_id: str, sandbox_config: Any, config: Any) -> str:
        """CreateContainer; returns its id."""
        response = self.runtime.CreateContainer(self.pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config))
        return str(response.container_id)

    def run_container(self, image: str, command: Sequence[str] = ("sleep", "3600"), *,
                      pod: tuple[str, Any] | None = None, **fields: Any) -> tuple[str, str]:
        """Pull ``image``, run a pod (unless given) and start a container in it.

        Returns ``(sandbox id, container id)``.
        """
        self.pull(image)
        sandbox_id, sandbox_config = pod or self.run_pod()
        container_id = self.create_container(
            sandbox_id, sandbox_config, self.container_config(image, command, **fields))
        self.runtime.StartContainer(self.pb.StartContainerRequest(container_id=container_id))
        return sandbox_id, container_id

    def exec(self, container_id: str, *cmd: str, timeout: int = 10) -> Any:
        """ExecSync; returns the response (stdout, stderr, exit_code)."""
        return self.runtime.ExecSync(self.pb.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=timeout))

    def remove_everything(self) -> None:
        """Remove every pod (and so every container) the daemon holds."""
        for sandbox in self.runtime.ListPodSandbox(self.pb.ListPodSandboxRequest()).items:
            self.runtime.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox.id))
            self.runtime.RemovePodSandbox(
                self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id))


@contextlib.contextmanager
def connected(daemon: Any, log_dir: Path) -> Iterator[CriClient]:
    """A CRI client of ``daemon``; the pods left over are removed afterwards."""
    client = CriClient(daemon.cri_socket, log_dir)
    try:
        yield client
    finally:
        if daemon.running:
            try:
                client.remove_everything()
            except Exception as exc:
                print(f"CRI teardown: {exc}")
        client.close()


@pytest.fixture
def cri(cri_daemon: Any, tmp_path: Path) -> Iterator[CriClient]:
    """A CRI client of ``cri_daemon``; pods left over are removed afterwards."""
    with connected(cri_daemon, tmp_path / "logs") as client:
        yield client


def netns_exists(path: str) -> bool:
    """Whether a pinned network namespace file is still there."""
    return bool(path) and os.path.exists(path)
