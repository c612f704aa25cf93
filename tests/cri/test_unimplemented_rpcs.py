"""RPCs the plugin does not implement answer UNIMPLEMENTED quietly.

critest (and the kubelet) fall back or skip on UNIMPLEMENTED; the kubelet polls
such calls, so each one must not log an error with a
traceback in the daemon's log.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.root


def test_unimplemented_rpcs_answer_unimplemented_without_logging_an_error(
        cri: Any, cri_daemon: Any) -> None:
    import grpc

    pb = cri.pb
    calls = [
        lambda: list(cri.runtime.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest())),
        lambda: cri.runtime.CheckpointContainer(
            pb.CheckpointContainerRequest(container_id="x")),
        lambda: list(cri.runtime.StreamPodSandboxes(pb.StreamPodSandboxesRequest())),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "is not implemented" in (err.value.details() or "")
    log = cri_daemon.log()
    assert "NotImplementedError" not in log
    assert "Traceback" not in log
