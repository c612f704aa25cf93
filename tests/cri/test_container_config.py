"""A container's OCI spec from its ContainerConfig: command, env, working dir, devices, resources.

As containerd's CRI (and Docker before it): ``command`` replaces the image's
Entrypoint and drops its Cmd, ``args`` replaces the Cmd; the environment is the
image's, then the config's (which wins); ``working_dir`` is the config's, else
the image's. Devices are created in the container and allowed in its devices
cgroup with the permissions asked; CPU and memory resources land in the
container's own cgroup; ``oom_score_adj`` is applied, but never below the
daemon's own (this host refuses lower values, see docs/cri.md). A user name is
looked up in the image's own ``/etc/passwd``, a symlink in it followed inside the
image's root (a hostile image cannot make the host's answer); an unknown one is
INVALID_ARGUMENT and the create leaves nothing.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.cri.conftest import CRI_NAMESPACE
from tests.fixtures.daemon import CGROUP_ROOT
from tests.fixtures.images import (
    DEFAULT_ENV,
    LayerBuilder,
    build_image,
    busybox_image,
    busybox_layer,
    host_platform,
)
from tests.fixtures.registry import Registry
from tests.fixtures.system import unavailable

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def app_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox with an Entrypoint, a Cmd, its own env and working directory."""
    layout = busybox_image(tmp_path_factory.mktemp("app-image") / "layout",
                           entrypoint=["echo", "from-entrypoint"], cmd=["from-cmd"],
                           env=[*DEFAULT_ENV, "FROM_IMAGE=1", "OVERRIDDEN=image"],
                           working_dir="/etc")
    return registry.push_layout(layout.path, layout.ref_name, "cri/app:1")


def _exited(cri: Any, container_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = cri.runtime.ContainerStatus(
            cri.pb.ContainerStatusRequest(container_id=container_id)).status
        if status.state == cri.pb.CONTAINER_EXITED or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _output(cri: Any, image: str, command: list[str], args: list[str]) -> str:
    """Run a container to its end; its stdout (the messages of the CRI log lines)."""
    _, container_id = cri.run_container(image, command, args=args)
    status = _exited(cri, container_id)
    assert status.exit_code == 0, status
    # '<time> stdout F <message>'
    return "".join(line.split(" ", 3)[3] for line in
                   Path(status.log_path).read_text().splitlines())


@pytest.mark.parametrize(("command", "args", "expected"), [
    ([], [], "from-entrypoint from-cmd"),
    ([], ["from-args"], "from-entrypoint from-args"),
    (["echo", "from-command"], [], "from-command"),
    (["echo", "from-command"], ["from-args"], "from-command from-args"),
], ids=["image", "args", "command", "command-and-args"])
def test_command_replaces_the_entrypoint_and_args_the_cmd(
        cri: Any, app_image: str, command: list[str], args: list[str], expected: str) -> None:
    assert _output(cri, app_image, command, args) == expected


def test_env_is_the_images_then_the_configs(cri: Any, app_image: str) -> None:
    pb = cri.pb
    _, container_id = cri.run_container(
        app_image, ["sleep", "3600"],
        envs=[pb.KeyValue(key="OVERRIDDEN", value=b"config"),
              pb.KeyValue(key="FROM_CONFIG", value=b"2")])
    env = cri.exec(container_id, "env").stdout.decode().splitlines()
    assert {"FROM_IMAGE=1", "OVERRIDDEN=config", "FROM_CONFIG=2"} <= set(env), env
    assert "OVERRIDDEN=image" not in env
    assert any(line.startswith("PATH=") for line in env)


def test_working_dir_is_the_configs_else_the_images(cri: Any, app_image: str) -> None:
    _, from_image = cri.run_container(app_image, ["sleep", "3600"])
    assert cri.exec(from_image, "pwd").stdout == b"/etc\n"
    _, from_config = cri.run_container(app_image, ["sleep", "3600"], working_dir="/tmp")
    assert cri.exec(from_config, "pwd").stdout == b"/tmp\n"


def test_a_device_is_made_in_the_container_with_the_permissions_asked(
        cri: Any, cri_image: str) -> None:
    # Not one of the devices every container may use (null, zero, tty...): only the
    # permissions asked open it.
    device = Path("/dev/loop-control")
    if not device.exists():
        unavailable("/dev/loop-control (the loop module)")
    host = device.stat()
    _, container_id = cri.run_container(cri_image, devices=[cri.pb.Device(
        host_path=str(device), container_path="/dev/cri-dev", permissions="r")])
    listed = cri.exec(container_id, "ls", "-l", "/dev/cri-dev").stdout.decode()
    assert listed.startswith("c"), listed
    assert re.search(rf"\b{os.major(host.st_rdev)},\s+{os.minor(host.st_rdev)}\b", listed), listed
    assert cri.exec(container_id, "sh", "-c", ": < /dev/cri-dev").exit_code == 0
    # 'r' only: the devices cgroup refuses opening it for writing.
    assert cri.exec(container_id, "sh", "-c", ": > /dev/cri-dev").exit_code != 0


def _cgroup_file(cri_daemon: Any, container_id: str, controller: str, name: str) -> str:
    pid = cri_daemon.client(CRI_NAMESPACE).task(container_id).pid
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return (CGROUP_ROOT / controller / path.lstrip("/") / name).read_text().strip()
    raise AssertionError(f"no {controller} cgroup for {container_id}")


def test_cpu_and_memory_resources_are_set_in_the_containers_cgroup(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    if not (CGROUP_ROOT / "cpu" / "cpu.shares").exists():
        unavailable("reads cgroup v1 files (the hybrid hosts of this project)")
    config = cri.pb.LinuxContainerConfig()
    resources = config.resources
    resources.cpu_shares = 512
    resources.cpu_period = 100_000
    resources.cpu_quota = 50_000
    resources.memory_limit_in_bytes = 96 << 20
    _, container_id = cri.run_container(cri_image, linux=config)
    assert _cgroup_file(cri_daemon, container_id, "cpu", "cpu.shares") == "512"
    assert _cgroup_file(cri_daemon, container_id, "cpu", "cpu.cfs_period_us") == "100000"
    assert _cgroup_file(cri_daemon, container_id, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _cgroup_file(cri_daemon, container_id, "memory",
                        "memory.limit_in_bytes") == str(96 << 20)


def test_oom_score_adj_is_applied_but_never_below_the_daemons(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    floor = int(Path(f"/proc/{cri_daemon.proc.pid}/oom_score_adj").read_text())
    pod = cri.run_pod()
    wanted = max(floor, 0) + 100
    scores = {}
    for value in (wanted, -999):
        config = cri.pb.LinuxContainerConfig()
        config.resources.oom_score_adj = value
        _, container_id = cri.run_container(cri_image, pod=pod, linux=config)
        pid = cri_daemon.client(CRI_NAMESPACE).task(container_id).pid
        scores[value] = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    assert scores[wanted] == wanted
    assert scores[-999] == max(-999, floor)


@pytest.fixture(scope="module")
def climbing_passwd_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """USER ``climber``, from an /etc/passwd that is a symlink climbing out of the root."""
    layout = tmp_path_factory.mktemp("climbing-passwd") / "layout"
    upper = (LayerBuilder(implicit_parents=True)
             .file("users/passwd", "climber:x:4242:4343::/:/bin/sh\n")
             .symlink("etc/passwd", "../../../../../../users/passwd"))
    build_image(layout, (busybox_layer(), upper), platform=host_platform(), ref_name="climb",
                cmd=["sh"], user="climber")
    return registry.push_layout(layout, "climb", "cri/climb:1")


def test_the_images_user_is_looked_up_inside_its_root(cri: Any,
                                                      climbing_passwd_image: str) -> None:
    _, container_id = cri.run_container(climbing_passwd_image)
    assert cri.exec(container_id, "id", "-u").stdout == b"4242\n"
    assert cri.exec(container_id, "id", "-g").stdout == b"4343\n"


def test_an_unknown_user_is_invalid_argument_and_the_create_leaves_nothing(
        cri: Any, cri_daemon: Any, cri_image: str) -> None:
    pb = cri.pb
    cri.pull(cri_image)
    sandbox_id, sandbox_config = cri.run_pod()
    config = cri.container_config(cri_image, name="who")
    config.linux.security_context.run_as_username = "nobody-here"
    records = {c.id for c in cri_daemon.client(CRI_NAMESPACE).containers()}
    with pytest.raises(grpc.RpcError) as refused:
        cri.create_container(sandbox_id, sandbox_config, config)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nobody-here" in (refused.value.details() or "")
    assert {c.id for c in cri_daemon.client(CRI_NAMESPACE).containers()} == records
    assert cri.runtime.ListContainers(pb.ListContainersRequest()).containers == []
    config.linux.security_context.ClearField("run_as_username")
    cri.create_container(sandbox_id, sandbox_config, config)  # the name was released
