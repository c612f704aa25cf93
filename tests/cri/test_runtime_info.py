"""CRI runtime information: Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.root


def test_version_names_moorage_and_the_v1_api(cri: Any) -> None:
    response = cri.runtime.Version(cri.pb.VersionRequest(version="v1"))
    assert response.runtime_name == "moorage"
    assert response.runtime_api_version == "v1"
    assert response.runtime_version and response.version


def test_status_reports_runtime_and_network_ready(cri: Any) -> None:
    response = cri.runtime.Status(cri.pb.StatusRequest())
    conditions = {c.type: c for c in response.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True
    assert "" in [h.name for h in response.runtime_handlers]


def test_runtime_config_reports_the_cgroupfs_driver(cri: Any) -> None:
    response = cri.runtime.RuntimeConfig(cri.pb.RuntimeConfigRequest())
    assert response.linux.cgroup_driver == cri.pb.CGROUPFS


def test_update_runtime_config_accepts_a_pod_cidr(cri: Any) -> None:
    request = cri.pb.UpdateRuntimeConfigRequest()
    request.runtime_config.network_config.pod_cidr = "10.244.0.0/16"
    cri.runtime.UpdateRuntimeConfig(request)
