"""cri.v1 loads gRPC only when a CRI client first speaks, and every client is served from then on.

The daemon binds the CRI socket itself; gRPC is imported and started when a
connection sends its first bytes, and the connections accepted before that are
relayed to it until the relay target ages them out (runtime/plugins/cri/listener.py).
Whether gRPC is loaded is read from the daemon's /proc/PID/maps (grpcio's
``cygrpc`` extension module).
"""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.cri.conftest import connected, running_cri_daemon, wait_for_socket

pytestmark = pytest.mark.root


def grpc_loaded(daemon: Any) -> bool:
    """Whether the daemon process has grpcio's core (``cygrpc``) mapped."""
    assert daemon.proc is not None
    return "cygrpc" in Path(f"/proc/{daemon.proc.pid}/maps").read_text()


def protobuf_loaded(daemon: Any) -> bool:
    """Whether the daemon has protobuf's runtime (upb's ``_message`` extension) mapped.

    The CRI messages (``api_pb2``) and ``json_format`` cannot be imported without it.
    """
    assert daemon.proc is not None
    return "google/_upb/_message" in Path(f"/proc/{daemon.proc.pid}/maps").read_text()


def fresh_channel(path: Path) -> Any:
    """A channel with a connection of its own (not shared with other channels in this process)."""
    import grpc

    return grpc.insecure_channel(f"unix://{path}", options=[("grpc.use_local_subchannel_pool", 1)])


def runtime_stub(channel: Any) -> Any:
    from runtime.plugins.cri.v1 import api_pb2_grpc as pb_grpc

    return pb_grpc.RuntimeServiceStub(channel)


def pb() -> Any:
    from runtime.plugins.cri.v1 import api_pb2

    return api_pb2


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def idle_cri_daemon(tmp_path: Path) -> Iterator[Any]:
    """A daemon serving cri.v1 that no CRI client has spoken to yet."""
    with running_cri_daemon(tmp_path / "daemon") as daemon:
        yield daemon


def connect_and_close(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(path))


def test_daemon_with_cri_enabled_imports_no_grpc_until_a_client_connects(
        idle_cri_daemon: Any) -> None:
    daemon = idle_cri_daemon
    # wait_for_socket connected (and closed) already: that loads nothing either.
    assert not grpc_loaded(daemon)
    assert stat.S_IMODE(daemon.cri_socket.stat().st_mode) == 0o660
    with fresh_channel(daemon.cri_socket) as channel:
        version = runtime_stub(channel).Version(pb().VersionRequest(), timeout=30)
    assert version.runtime_name == "moorage"
    assert grpc_loaded(daemon)
    # gRPC's own listener is at the path now, with the same mode.
    assert stat.S_ISSOCK(daemon.cri_socket.stat().st_mode)
    assert stat.S_IMODE(daemon.cri_socket.stat().st_mode) == 0o660
    assert "streaming server listening" not in daemon.log()


def test_daemon_with_cri_enabled_loads_no_protobuf_until_a_client_connects(
        idle_cri_daemon: Any) -> None:
    daemon = idle_cri_daemon
    assert not protobuf_loaded(daemon)
    with fresh_channel(daemon.cri_socket) as channel:
        assert runtime_stub(channel).Version(pb().VersionRequest(), timeout=30).version
    assert protobuf_loaded(daemon)


def test_the_first_status_and_version_on_a_fresh_channel_succeed(idle_cri_daemon: Any) -> None:
    with fresh_channel(idle_cri_daemon.cri_socket) as channel:
        stub = runtime_stub(channel)
        # No wait_for_ready: a refused or reset connection would fail the call at once.
        status = stub.Status(pb().StatusRequest(), timeout=30).status
        assert {c.type: c.status for c in status.conditions}["RuntimeReady"]
        assert stub.Version(pb().VersionRequest(), timeout=30).runtime_api_version == "v1"


def test_a_client_that_connects_and_closes_without_sending_loads_nothing(
        idle_cri_daemon: Any) -> None:
    daemon = idle_cri_daemon
    for _ in range(20):
        connect_and_close(daemon.cri_socket)
    assert not grpc_loaded(daemon)
    with fresh_channel(daemon.cri_socket) as channel:
        assert runtime_stub(channel).Version(pb().VersionRequest(), timeout=30).version
    # After the switch, a silent connection is as harmless.
    connect_and_close(daemon.cri_socket)
    with fresh_channel(daemon.cri_socket) as channel:
        assert runtime_stub(channel).Version(pb().VersionRequest(), timeout=30).version


def test_many_concurrent_first_clients_are_all_answered(idle_cri_daemon: Any) -> None:
    daemon = idle_cri_daemon
    clients = 24
    # A connection that says nothing while the others start gRPC blocks no one.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(daemon.cri_socket))
        channels = [fresh_channel(daemon.cri_socket) for _ in range(clients)]
        barrier = threading.Barrier(clients)

        def first_call(channel: Any) -> str:
            barrier.wait()
            return str(runtime_stub(channel).Version(pb().VersionRequest(),
                                                     timeout=60).runtime_name)

        try:
            with ThreadPoolExecutor(clients) as pool:
                names = list(pool.map(first_call, channels))
            assert names == ["moorage"] * clients
            # Each channel keeps working: over the relay, then (after its GOAWAY) directly.
            for channel in channels:
                assert runtime_stub(channel).Version(pb().VersionRequest(), timeout=30).version
        finally:
            for channel in channels:
                channel.close()
    assert daemon.running


def test_a_relayed_client_moves_to_grpc_without_a_failed_call(idle_cri_daemon: Any) -> None:
    daemon = idle_cri_daemon
    relay_target = daemon.cri_socket.with_name(f".{daemon.cri_socket.name}.relay")
    with fresh_channel(daemon.cri_socket) as channel:
        stub = runtime_stub(channel)
        stub.Version(pb().VersionRequest(), timeout=30)
        assert relay_target.exists()  # the first connection is relayed
        calls = 0

        def call_once() -> bool:
            nonlocal calls
            stub.Version(pb().VersionRequest(), timeout=30)  # raises on any failure
            calls += 1
            return not relay_target.exists()

        # The relay target's GOAWAY moves the channel to gRPC's own listener; once no
        # relayed connection is left, the relay target stops and its socket goes.
        wait_until(call_once, "off the relay")
        assert calls > 1
        stub.Status(pb().StatusRequest(), timeout=30)


def test_stop_while_a_relayed_stream_is_open_ends_it_and_removes_the_socket(
        tmp_path: Path) -> None:
    import grpc

    with running_cri_daemon(tmp_path / "daemon") as daemon:
        channel = fresh_channel(daemon.cri_socket)
        events = runtime_stub(channel).GetContainerEvents(pb().GetEventsRequest())
        ended: list[BaseException] = []

        def read() -> None:
            try:
                for _ in events:
                    pass
            except grpc.RpcError as exc:
                ended.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: grpc_loaded(daemon), "serving gRPC")  # the stream's bytes came
        assert daemon.stop() == 0
        reader.join(30)
        assert not reader.is_alive()
        assert ended
        assert ended[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not daemon.cri_socket.exists()
        assert not list(daemon.cri_socket.parent.glob(f".{daemon.cri_socket.name}.*"))
        channel.close()


def test_a_restarted_daemon_listens_without_grpc_and_answers_its_first_client(
        tmp_path: Path) -> None:
    with running_cri_daemon(tmp_path / "daemon") as daemon, \
            connected(daemon, tmp_path / "logs") as client:
        # A pod to recover at the restart: recovery reads its record without protobuf.
        sandbox_id, _ = client.run_pod()
        assert daemon.stop() == 0
        daemon.start()
        wait_for_socket(daemon)
        assert not grpc_loaded(daemon)
        assert not protobuf_loaded(daemon)
        with fresh_channel(daemon.cri_socket) as channel:
            assert runtime_stub(channel).Status(pb().StatusRequest(), timeout=30).status
            pods = runtime_stub(channel).ListPodSandbox(pb().ListPodSandboxRequest(),
                                                        timeout=30).items
        assert grpc_loaded(daemon)
        assert [p.id for p in pods] == [sandbox_id]
