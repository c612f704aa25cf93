"""Top-level verbs of issue #18 in the forms the other files leave out: ``logs -f`` with
``--tail``/``--since``/``-t``, ``stats`` streaming, ``update --cpus``, ``exec -t``, and
``inspect`` of an image whose config sets Env, Cmd and Entrypoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fixtures.images import busybox_image
from tests.fixtures.registry import Registry
from tests.plugins.runtime.helpers import RuntimeDaemon, moorage, wait_until

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")


def ok(rd: RuntimeDaemon, *args: str) -> str:
    result = moorage(rd.address, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def detached(rd: RuntimeDaemon, rootfs: Path, name: str, *command: str) -> None:
    ok(rd, "create", "--name", name, "--net", "none", "--rootfs", str(rootfs), "busybox",
       *(command or SLEEPER))
    ok(rd, "start", name)


def status(rd: RuntimeDaemon, name: str) -> str:
    return ok(rd, "inspect", "-f", "{{.State.Status}}", name).strip()


def test_logs_follow_with_tail_and_timestamps_prints_the_last_lines_then_new_ones(
        rd: RuntimeDaemon, rootfs: Path) -> None:
    detached(rd, rootfs, "chatty", "sh", "-c",
             "echo old1; echo old2; echo old3; sleep 2; echo new1; sleep 0.3; echo new2")
    wait_until(lambda: "old3" in ok(rd, "logs", "chatty"), what="the first lines")
    began = time.monotonic()
    result = moorage(rd.address, "logs", "-f", "--tail", "1", "-t", "chatty")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began > 1  # it waited for the new lines: it followed
    stamped = result.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["old3", "new1", "new2"]
    when = [datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))
            for line in stamped]
    assert when == sorted(when) and (when[1] - when[0]).total_seconds() > 1


def test_logs_follow_since_skips_what_came_before(rd: RuntimeDaemon, rootfs: Path) -> None:
    detached(rd, rootfs, "later", "sh", "-c", "echo before; sleep 2; echo after; sleep 0.5")
    wait_until(lambda: "before" in ok(rd, "logs", "later"), what="the first line")
    since = datetime.now(UTC).isoformat()
    result = moorage(rd.address, "logs", "-f", "--since", since, "later")
    assert (result.returncode, result.stdout) == (0, "after\n"), result.stderr


def test_stats_without_no_stream_refreshes_until_interrupted(rd: RuntimeDaemon,
                                                             rootfs: Path) -> None:
    detached(rd, rootfs, "busy")
    with subprocess.Popen(
            [sys.executable, "-m", "runtime.cli.main", "--address", rd.address, "stats",
             "--format", "json", "busy"], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            samples = [json.loads(proc.stdout.readline()) for _ in range(3)]
        finally:
            proc.kill()
    assert [[row["ID"] for row in sample] for sample in samples] == [["busy"]] * 3
    assert all(sample[0]["PIDs"] >= 1 for sample in samples)


def test_update_cpus_sets_the_cfs_quota(rd: RuntimeDaemon, rootfs: Path) -> None:
    detached(rd, rootfs, "capped")
    assert ok(rd, "update", "--cpus", "0.5", "capped") == "capped\n"
    spec = json.loads(ok(rd, "inspect", "-f", "{{json .Spec}}", "capped"))
    cpu = spec["linux"]["resources"]["cpu"]
    assert cpu["quota"] / cpu["period"] == 0.5
    bad = moorage(rd.address, "update", "--cpus", "lots", "capped")
    assert bad.returncode == 125 and "usage: moorage update" in bad.stderr


def test_exec_t_gives_the_process_a_terminal(rd: RuntimeDaemon, rootfs: Path) -> None:
    detached(rd, rootfs, "box")
    result = moorage(rd.address, "exec", "-t", "box", "sh", "-c", "test -t 1 && tty")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("/dev/pts/")
    plain = moorage(rd.address, "exec", "box", "sh", "-c", "test -t 1")
    assert plain.returncode == 1


def test_inspect_of_an_image_shows_its_env_cmd_and_entrypoint(
        rd: RuntimeDaemon, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> None:
    layout = busybox_image(tmp_path_factory.mktemp("configured"), extra_config={
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $GREETING"],
        "Env": ["PATH=/bin", "GREETING=hello"]})
    ref = registry.push_layout(layout.path, layout.ref_name, "verbs/configured:1")
    ok(rd, "pull", "--plain-http", "-q", ref)
    [doc] = json.loads(ok(rd, "inspect", ref))
    assert doc["Config"]["Entrypoint"] == ["/bin/sh", "-c"]
    assert doc["Config"]["Cmd"] == ["echo $GREETING"]
    assert doc["Config"]["Env"] == ["PATH=/bin", "GREETING=hello"]
    assert ok(rd, "inspect", "-f", "{{.Config.Entrypoint}}", ref).strip() != ""
    # The image's Entrypoint + Cmd + Env are what a run without a command executes.
    assert ok(rd, "run", "--rm", "--net", "none", ref) == "hello\n"
