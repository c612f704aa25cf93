"""``moorage commit``: a container's changes (added, changed, deleted files) as a new image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.runtime.helpers import RuntimeDaemon, moorage, wait_until
from tests.plugins.runtime.helpers import moorage_ok as ok

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root



def test_commit_of_a_running_container_then_run_sees_its_changes(
        rd: RuntimeDaemon, pushed_busybox: str) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    ok(rd, "run", "-d", "--name", "box", "--net", "none", pushed_busybox, "sh", "-c",
       "echo committed > /hello; rm -r /home/app; chmod 0600 /etc/group; "
       "touch /ready; while true; do sleep 0.1; done")
    wait_until(lambda: moorage(rd.address, "exec", "box", "test", "-e", "/ready")
               .returncode == 0, timeout=20)
    image_id = ok(rd, "commit", "-m", "my change", "-a", "Tester <t@example.com>", "box",
                  "example.com/committed:v1").strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert ok(rd, "inspect", "-f", "{{.State.Status}}", "box") == "running\n"  # resumed

    result = moorage(rd.address, "run", "--rm", "--net", "none", "example.com/committed:v1",
                     "sh", "-c", "cat /hello; test -e /home/app || echo gone; "
                     "stat -c %a /etc/group")
    assert (result.returncode, result.stdout) == (0, "committed\ngone\n600\n"), result.stderr

    [base] = json.loads(ok(rd, "inspect", "--type", "image", pushed_busybox))
    [doc] = json.loads(ok(rd, "inspect", "--type", "image", "example.com/committed:v1"))
    assert doc["RootFS"]["diff_ids"][:-1] == base["RootFS"]["diff_ids"]
    assert len(doc["RootFS"]["diff_ids"]) == len(base["RootFS"]["diff_ids"]) + 1
    config = json.loads(b"".join(rd.client().read_content(image_id)))
    assert config["history"][-1]["comment"] == "my change"
    assert config["author"] == "Tester <t@example.com>"


def test_commit_of_a_stopped_container_names_it_after_the_container_by_default(
        rd: RuntimeDaemon, pushed_busybox: str) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    ok(rd, "run", "--name", "done", "--net", "none", pushed_busybox, "sh", "-c",
       "mkdir -p /data && echo kept > /data/file")
    ok(rd, "commit", "done")
    result = moorage(rd.address, "run", "--rm", "--net", "none", "done:latest",
                     "cat", "/data/file")
    assert (result.returncode, result.stdout) == (0, "kept\n"), result.stderr


def test_commit_refusals_exit_125_and_make_no_image(
        rd: RuntimeDaemon, pushed_busybox: str, rootfs: Path) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    before = ok(rd, "images", "-q")
    missing = moorage(rd.address, "commit", "nosuch", "example.com/x:1")
    assert missing.returncode == 125 and "no such container: nosuch" in missing.stderr
    ok(rd, "create", "--name", "dir", "--net", "none", "--rootfs", str(rootfs), "busybox",
       "true")
    no_snapshot = moorage(rd.address, "commit", "dir", "example.com/x:1")
    assert no_snapshot.returncode == 125, no_snapshot.stderr
    ok(rd, "create", "--name", "fine", "--net", "none", pushed_busybox, "true")
    bad_name = moorage(rd.address, "commit", "fine", "Not A Reference")
    assert bad_name.returncode == 125 and "'Not A Reference'" in bad_name.stderr
    assert ok(rd, "images", "-q") == before


def test_commit_from_the_native_snapshotter_walks_both_trees(
        rd: RuntimeDaemon, pushed_busybox: str) -> None:
    # native snapshots are plain directories: the differ mounts parent and child and walks them.
    ok(rd, "pull", "--plain-http", "-q", "--snapshotter", "native", pushed_busybox)
    ok(rd, "run", "--name", "flat", "--net", "none", "--snapshotter", "native", pushed_busybox,
       "sh", "-c", "echo native > /hello; rm /etc/group")
    assert ok(rd, "inspect", "-f", "{{.Snapshotter}}", "flat") == "native\n"
    ok(rd, "commit", "flat", "example.com/native:1")
    result = moorage(rd.address, "run", "--rm", "--net", "none", "example.com/native:1",
                     "sh", "-c", "cat /hello; test -e /etc/group || echo gone")
    assert (result.returncode, result.stdout) == (0, "native\ngone\n"), result.stderr
