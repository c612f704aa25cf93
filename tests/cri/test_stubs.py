"""The committed CRI stubs are what scripts/gen-cri.sh makes from api.proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUBS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    work = tmp_path / "runtime" / "plugins" / "cri" / "v1"
    work.mkdir(parents=True)
    shutil.copy(REPO / "runtime/plugins/cri/v1/api.proto", work / "api.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--pyi_out=.", "--grpc_python_out=.", "runtime/plugins/cri/v1/api.proto"],
                   cwd=tmp_path, check=True)
    for name in STUBS:
        assert (work / name).read_text() == (REPO / "runtime/plugins/cri/v1" / name).read_text(), (
            f"{name} is stale: run scripts/gen-cri.sh")


def test_wire_names_are_those_of_cri_v1() -> None:
    from runtime.plugins.cri.v1 import api_pb2 as pb

    services = pb.DESCRIPTOR.services_by_name
    assert services["RuntimeService"].full_name == "runtime.v1.RuntimeService"
    assert services["ImageService"].full_name == "runtime.v1.ImageService"
    assert pb.PodSandboxConfig.DESCRIPTOR.fields_by_name["log_directory"].number == 3
    assert pb.ContainerConfig.DESCRIPTOR.fields_by_name["stop_signal"].number == 18


def test_pod_metrics_metric_types_are_those_of_the_proto() -> None:
    from runtime.plugins.cri import pod_metrics
    from runtime.plugins.cri.v1 import api_pb2 as pb

    assert (pod_metrics._COUNTER, pod_metrics._GAUGE) == (pb.COUNTER, pb.GAUGE)
