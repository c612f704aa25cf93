"""Pods survive a daemon restart; GetContainerEvents streams container lifecycle events."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.cri.conftest import wait_for_socket

pytestmark = pytest.mark.root


def test_running_pods_keep_running_across_a_daemon_restart(cri: Any, cri_daemon: Any,
                                                           cri_image: str) -> None:
    pb = cri.pb
    sandbox_id, container_id = cri.run_container(cri_image)
    cri_daemon.stop()
    cri_daemon.cri_socket.unlink(missing_ok=True)
    cri_daemon.start()
    wait_for_socket(cri_daemon)
    sandboxes = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [(s.id, s.state) for s in sandboxes] == [(sandbox_id, pb.SANDBOX_READY)]
    containers = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [(c.id, c.state) for c in containers] == [(container_id, pb.CONTAINER_RUNNING)]
    assert cri.exec(container_id, "echo", "still-here").stdout == b"still-here\n"
    # And the names are still reserved.
    status = cri.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
    assert status.network.ip


def test_get_container_events_reports_created_started_stopped_deleted_not_execs(cri: Any,
                                                                      cri_image: str) -> None:
    pb = cri.pb
    events: list[Any] = []
    stream = cri.runtime.GetContainerEvents(pb.GetEventsRequest())
    done = threading.Event()

    def read() -> None:
        try:
            for event in stream:
                events.append(event)
                if event.container_event_type == pb.CONTAINER_DELETED_EVENT:
                    break
        except Exception:
            pass
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    import time
    time.sleep(0.5)  # let the subscription start
    sandbox_id, container_id = cri.run_container(cri_image)
    # An exec's exit and delete are not the container's.
    assert cri.exec(container_id, "true").exit_code == 0
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=1))
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
    done.wait(15)
    stream.cancel()
    mine = [e for e in events if e.container_id == container_id]
    assert [e.container_event_type for e in mine] == [
        pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT]
    assert all(e.created_at > 0 for e in mine)
    assert mine[1].pod_sandbox_status.id == sandbox_id
