"""``metrics.prometheus``: ``GET /v1/metrics`` parses, and its figures follow what happens.

Daemon-wide figures (plugins, events, API requests, content, snapshots, GC)
are checked on a plain daemon; task figures on busybox tasks that burn CPU or
fill ``/dev/shm``, which is charged to the task's memory cgroup.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from runtime.api.specs import SpecOptions
from runtime.client import Client
from runtime.core.errors import NotFound
from runtime.plugins.snapshots.api import Mount
from tests.fixtures.daemon import Daemon
from tests.plugins.runtime.helpers import RuntimeDaemon, moorage, wait_until

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

Families = dict[str, Metric]


def parse(text: str) -> Families:
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(api: Client) -> Families:
    response = api.open("GET", "/v1/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.read().decode())


def value(families: Families, family: str, sample: str | None = None,
          **labels: str) -> float | None:
    """The first sample of ``family`` (named ``sample``, default the family) with ``labels``."""
    for s in families[family].samples if family in families else []:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    with Daemon(tmp_path) as running:
        yield running


class TestDaemonFigures:
    def test_exposition_parses_with_build_plugins_and_events(self, daemon: Daemon) -> None:
        families = scrape(daemon.client())
        assert value(families, "moorage_build_info") == 1.0
        [build] = families["moorage_build_info"].samples
        assert build.labels["version"]
        init = {s.labels["plugin"]: s for s in families["moorage_plugin_init_seconds"].samples}
        assert init["metadata.sqlite"].labels["status"] == "ok"
        assert init["metadata.sqlite"].value >= 0
        assert init["metrics.prometheus"].labels == {
            "plugin": "metrics.prometheus", "type": "metrics", "status": "ok"}
        # The GC follower is a subscriber of its own.
        assert (value(families, "moorage_events_subscribers") or 0) >= 1
        assert value(families, "moorage_events_overflows", "moorage_events_overflows_total") == 0

    def test_process_figures_count_the_daemons_tasks_threads_and_fds(
            self, daemon: Daemon) -> None:
        families = scrape(daemon.client())
        assert daemon.proc is not None
        pid = daemon.proc.pid
        # At least the scrape's handler and the API server's own tasks.
        assert (value(families, "moorage_process_async_tasks") or 0) >= 2
        threads = value(families, "moorage_process_threads")
        fds = value(families, "moorage_process_open_fds")
        assert threads is not None and 1 <= threads <= len(os.listdir(f"/proc/{pid}/task")) + 4
        assert fds is not None and 3 <= fds <= len(os.listdir(f"/proc/{pid}/fd")) + 8

    def test_requests_counted_by_route_and_status(self, daemon: Daemon) -> None:
        api = daemon.client()
        api.version()
        api.version()
        with pytest.raises(NotFound):
            api.get_namespace("nosuch")
        with pytest.raises(NotFound):
            api.open("GET", "/v1/no-such-endpoint")
        families = scrape(api)
        total = "moorage_api_requests_total"
        assert value(families, "moorage_api_requests", total, route="/v1/version",
                     method="GET", status="200") == 2
        assert value(families, "moorage_api_requests", total, route="/v1/namespaces/{name}",
                     status="404") == 1
        assert value(families, "moorage_api_requests", total, route="unmatched",
                     status="404") == 1
        count = value(families, "moorage_api_request_duration_seconds",
                      "moorage_api_request_duration_seconds_count", route="/v1/version")
        assert count == 2

    def test_content_snapshots_and_gc(self, daemon: Daemon) -> None:
        api = daemon.client()
        blob = b"metrics blob\n" * 100
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        # A root, so that no collection removes it before it is counted.
        api.write_content("m1", blob, expected=digest, commit=True,
                          labels={"containerd.io/gc.root": "yes"})
        api.prepare_snapshot("native", "k1")
        families = scrape(api)
        assert value(families, "moorage_content_blobs", namespace="default") == 1
        assert value(families, "moorage_content_bytes", namespace="default") == len(blob)
        assert (value(families, "moorage_content_store_bytes") or 0) >= len(blob)
        assert value(families, "moorage_snapshots", snapshotter="native", namespace="default",
                     kind="active") == 1

        runs = value(families, "moorage_gc_collections", "moorage_gc_collections_total") or 0
        # Neither rooted nor leased: the next collection removes it.
        garbage = b"garbage\n" * 50
        api.write_content("m2", garbage, expected="sha256:" + hashlib.sha256(garbage).hexdigest(),
                          commit=True)
        api.gc()

        def removed() -> Families | None:
            # The write may have scheduled a collection of its own: count them all.
            now = scrape(api)
            freed = value(now, "moorage_gc_removed_bytes", "moorage_gc_removed_bytes_total",
                          kind="content") or 0
            return now if freed >= len(garbage) else None

        families = wait_until(removed, what="the removal to be counted")
        assert (value(families, "moorage_gc_collections",
                      "moorage_gc_collections_total") or 0) > runs
        assert (value(families, "moorage_gc_removed_objects", "moorage_gc_removed_objects_total",
                      kind="content") or 0) >= 1
        assert (value(families, "moorage_gc_pause_seconds",
                      "moorage_gc_pause_seconds_count") or 0) >= 1
        assert value(families, "moorage_content_blobs", namespace="default") == 1

    def test_separate_listener(self, tmp_path: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = f'[plugins."metrics.prometheus"]\naddress = "127.0.0.1:{port}"\n'
        url = f"http://127.0.0.1:{port}/metrics"
        with Daemon(tmp_path, config), urllib.request.urlopen(url, timeout=10) as response:
            families = parse(response.read().decode())
        assert "moorage_plugin_init_seconds" in families


class TestCgroupIO:
    """IO figures are parsed from cgroup files (this VM's disk does no cgroup IO accounting)."""

    def test_v1_blkio_throttle(self, tmp_path: Path) -> None:
        from runtime.plugins.runtime.runc.cgroups import CgroupPaths, read_metrics

        (tmp_path / "blkio.throttle.io_service_bytes").write_text(
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 100\n8:16 Write 1\n"
            "Total 12389\n")
        metrics = read_metrics("c1", CgroupPaths(mode="v1", v1={"blkio": tmp_path}))
        assert (metrics.io_read_bytes, metrics.io_write_bytes) == (4196, 8193)

    def test_v2_io_stat(self, tmp_path: Path) -> None:
        from runtime.plugins.runtime.runc.cgroups import CgroupPaths, read_metrics

        (tmp_path / "io.stat").write_text(
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
            "8:16 rbytes=100 wbytes=1 rios=1 wios=1 dbytes=0 dios=0\n")
        paths = CgroupPaths(mode="v2", v2=tmp_path, v2_controllers=frozenset({"io"}))
        metrics = read_metrics("c1", paths)
        assert (metrics.io_read_bytes, metrics.io_write_bytes) == (4196, 8193)


# -- tasks ----------------------------------------------------------------------------------


def start_task(api: Client, rootfs: Path, cid: str, script: str) -> None:
    api.create_container(cid, spec_options=SpecOptions(args=["sh", "-c", script]))
    api.create_task(cid, rootfs=[Mount(type="bind", source=str(rootfs), options=["rbind", "rw"])])
    api.start_task(cid)


def task_value(families: Families, family: str, cid: str, sample: str | None = None) -> float:
    found = value(families, family, sample, container_id=cid, namespace="default")
    assert found is not None, f"no {family} for {cid}"
    return found


@pytest.mark.root
class TestTaskFigures:
    def test_cpu_moves_when_a_task_burns_it(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        start_task(api, rootfs, "burn", "while :; do :; done")
        first = task_value(scrape(api), "moorage_task_cpu_seconds", "burn",
                           "moorage_task_cpu_seconds_total")
        time.sleep(1.0)
        families = scrape(api)
        second = task_value(families, "moorage_task_cpu_seconds", "burn",
                            "moorage_task_cpu_seconds_total")
        assert second - first > 0.3, (first, second)
        assert task_value(families, "moorage_task_pids", "burn") >= 1
        assert task_value(families, "moorage_task_io_write_bytes", "burn",
                          "moorage_task_io_write_bytes_total") >= 0
        [sample] = [s for s in families["moorage_task_pids"].samples]
        assert sample.labels["runtime"] == "runtime.runc"

    def test_memory_moves_when_a_task_fills_shm(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        start_task(api, rootfs, "fill", "sleep 1000")
        before = task_value(scrape(api), "moorage_task_memory_usage_bytes", "fill")
        api.exec_task("fill", "dd", ["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=50"])
        api.start_task("fill", "dd")
        assert api.wait_task("fill", "dd", timeout=60).exit_status == 0
        after = task_value(scrape(api), "moorage_task_memory_usage_bytes", "fill")
        assert after - before >= 45 * 1024 * 1024, (before, after)

    def test_stopped_tasks_are_left_out(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        start_task(api, rootfs, "quick", "exit 0")
        api.wait_task("quick", timeout=30)
        families = scrape(api)
        assert value(families, "moorage_task_pids", container_id="quick") is None

    def test_tasks_metrics_command_is_human_readable(self, rd: RuntimeDaemon,
                                                     rootfs: Path) -> None:
        api = rd.client()
        start_task(api, rootfs, "shown", "dd if=/dev/zero of=/dev/shm/x bs=1M count=20; "
                                         "sleep 1000")
        wait_until(lambda: api.task_metrics("shown").memory_usage_bytes > 20 << 20,
                   what="20 MiB charged")
        result = moorage(rd.address, "tasks", "metrics", "shown")
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()
        assert header.split()[:4] == ["TASK", "CPU", "MEMORY", "PIDS"]
        assert row.split()[0] == "shown"
        assert " MiB" in row
