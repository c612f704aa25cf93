"""Fewer requests per command: batch teardown and ``run --rm`` in one websocket.

``POST /v1/tasks/kill``, ``POST /v1/tasks/delete`` and ``POST /v1/run/remove``
(``runtime.api.batch``: many ids, one result each) and ``GET /v1/run/attach``
(create, attach, start and remove), through the lean client and the CLI, on
real runc.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.api.tasks import LOG_UNSYNCED_ANNOTATION
from runtime.client.attach import Exited, Output, Started
from runtime.client.lean import LeanClient
from runtime.core.errors import CommandNotFound, InvalidArgument, NotFound
from tests.plugins.runtime.helpers import (
    RuntimeDaemon,
    command_lines,
    leftovers,
    moorage,
    wait_until,
)

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

SLEEP = ["sleep", "600"]


def started(rd: RuntimeDaemon, rootfs: Path, *ids: str, start: bool = True) -> LeanClient:
    api = LeanClient(rd.address, namespace="default")
    mounts = [{"type": "bind", "source": str(rootfs), "options": ["rbind", "rw"]}]
    for cid in ids:
        api.run({"id": cid, "spec_options": {"args": SLEEP}}, rootfs=mounts, start=start)
    return api


def outcome(results: list) -> list[tuple[str, str]]:
    return [(r.id, r.code) for r in results]


def test_remove_many_removes_the_known_and_reports_the_unknown(rd: RuntimeDaemon,
                                                               rootfs: Path) -> None:
    api = started(rd, rootfs, "b1", "b2")
    results = api.remove_many(["b1", "ghost", "b2"], force=True, snapshot=True)
    assert outcome(results) == [("b1", ""), ("ghost", "not_found"), ("b2", "")]
    assert "ghost" in results[1].message
    assert rd.client().containers() == []
    assert leftovers(rd, "default", "b1") == leftovers(rd, "default", "b2") == []


def test_remove_many_without_force_refuses_a_container_with_a_task(rd: RuntimeDaemon,
                                                                  rootfs: Path) -> None:
    api = started(rd, rootfs, "b1")
    (result,) = api.remove_many(["b1"])
    assert (result.code, result.message) == (
        "failed_precondition", "container 'b1' still has a task; delete the task first")
    assert api.task("b1").status == "running"
    api.remove("b1", force=True)


def test_an_id_given_twice_is_acted_on_once(rd: RuntimeDaemon, rootfs: Path) -> None:
    api = started(rd, rootfs, "b1")
    assert outcome(api.remove_many(["b1", "b1"], force=True)) == [("b1", "")]


def test_kill_many_then_delete_many(rd: RuntimeDaemon, rootfs: Path) -> None:
    api = started(rd, rootfs, "b1", "b2")
    assert outcome(api.kill_tasks(["b1", "b2", "ghost"], "SIGKILL")) == [
        ("b1", ""), ("b2", ""), ("ghost", "not_found")]
    for cid in ("b1", "b2"):
        assert api.wait_task(cid).exit_status == 137
    assert outcome(api.delete_tasks(["ghost", "b2", "b1"])) == [
        ("ghost", "not_found"), ("b2", ""), ("b1", "")]
    with pytest.raises(NotFound):
        api.task("b1")
    assert outcome(api.remove_many(["b1", "b2"])) == [("b1", ""), ("b2", "")]


def test_delete_many_with_force_kills_running_tasks(rd: RuntimeDaemon, rootfs: Path) -> None:
    api = started(rd, rootfs, "b1", "b2")
    assert outcome(api.delete_tasks(["b1", "b2"])) == [
        ("b1", "failed_precondition"), ("b2", "failed_precondition")]
    assert outcome(api.delete_tasks(["b1", "b2"], force=True)) == [("b1", ""), ("b2", "")]
    api.remove_many(["b1", "b2"])
    assert leftovers(rd, "default", "b1") == []


def test_a_batch_names_at_least_one_id(rd: RuntimeDaemon) -> None:
    api = LeanClient(rd.address, namespace="default")
    with pytest.raises(InvalidArgument, match="at least one"):
        api.remove_many([])
    with pytest.raises(InvalidArgument, match="at most 1024"):
        api.kill_tasks([f"c{i}" for i in range(1025)])


def test_cli_teardown_takes_many_ids_in_one_request(rd: RuntimeDaemon, rootfs: Path) -> None:
    started(rd, rootfs, "b1", "b2")
    kill = moorage(rd.address, "tasks", "kill", "-s", "SIGKILL", "b1", "b2")
    assert (kill.returncode, kill.stdout, kill.stderr) == (0, "", "")
    rm = moorage(rd.address, "tasks", "rm", "-f", "b1", "ghost", "b2")
    assert rm.returncode == 1
    assert rm.stdout.split() == ["b1", "b2"]
    assert rm.stderr.startswith("moorage: not_found: ")
    gone = moorage(rd.address, "containers", "rm", "b1", "b2")
    assert (gone.returncode, gone.stdout.split()) == (0, ["b1", "b2"])
    assert rd.client().containers() == []


# -- GET /v1/run/attach: run --rm in one websocket ---------------------------------------


def attached_run(rd: RuntimeDaemon, rootfs: Path, cid: str, script: str, *,
                 remove: bool = True) -> tuple[str, int | None]:
    """Run ``sh -c script`` through ``/v1/run/attach``; its stdout and exit status."""
    api = LeanClient(rd.address, namespace="default")
    mounts = [{"type": "bind", "source": str(rootfs), "options": ["rbind", "rw"]}]
    attachment = api.run_attached({"id": cid, "spec_options": {"args": ["sh", "-c", script]}},
                                  rootfs=mounts, remove=remove)
    out: list[bytes] = []
    try:
        while True:
            message = attachment.receive()
            if isinstance(message, Output):
                out.append(message.data)
            elif isinstance(message, Exited):
                return b"".join(out).decode(), message.exit_status
    finally:
        attachment.close()


def test_run_attach_with_remove_propagates_the_exit_and_leaves_nothing(
        rd: RuntimeDaemon, rootfs: Path) -> None:
    assert attached_run(rd, rootfs, "r1", "echo hi; exit 3") == ("hi\n", 3)
    # Removed before the exit message: nothing is left once the client has it.
    assert rd.client().containers() == []
    assert rd.client().tasks() == []
    assert leftovers(rd, "default", "r1") == []
    assert attached_run(rd, rootfs, "r1", "exit 0") == ("", 0)  # the id is free again


def test_run_attach_without_remove_keeps_the_stopped_container(rd: RuntimeDaemon,
                                                               rootfs: Path) -> None:
    assert attached_run(rd, rootfs, "r1", "echo kept", remove=False) == ("kept\n", 0)
    api = LeanClient(rd.address, namespace="default")
    assert api.task("r1").status == "stopped"
    # Its log stays (`moorage logs`), so conmon synced it at the exit as ever.
    assert LOG_UNSYNCED_ANNOTATION not in rd.client().container("r1").spec.get("annotations", {})
    api.remove("r1", force=True)


def monitor_command_line(container_id: str) -> list[str]:
    """The command line of the conmon that supervises ``container_id``'s init."""
    for _, argv in command_lines():
        words = [a.decode() for a in argv if a]
        if words and words[0].endswith("conmon") and ["--cid", container_id] == \
                words[words.index("--cid"):words.index("--cid") + 2] and "--exec" not in words:
            return words
    raise AssertionError(f"no conmon for {container_id}")


def test_run_attach_with_remove_does_not_sync_the_log_it_removes(rd: RuntimeDaemon,
                                                                 rootfs: Path) -> None:
    api = LeanClient(rd.address, namespace="default")
    mounts = [{"type": "bind", "source": str(rootfs), "options": ["rbind", "rw"]}]
    attachment = api.run_attached({"id": "r1", "spec_options": {"args": SLEEP}},
                                  rootfs=mounts, remove=True)
    try:
        assert isinstance(attachment.receive(), Started)
        annotations = rd.client().container("r1").spec["annotations"]
        assert annotations[LOG_UNSYNCED_ANNOTATION] == "true"
        assert "--no-sync-log" in monitor_command_line("r1")
    finally:
        attachment.close()
    wait_until(lambda: rd.client().containers() == [], timeout=15)


def test_run_attach_start_failure_is_the_error_and_nothing_is_left(rd: RuntimeDaemon,
                                                                   rootfs: Path) -> None:
    api = LeanClient(rd.address, namespace="default")
    mounts = [{"type": "bind", "source": str(rootfs), "options": ["rbind", "rw"]}]
    attachment = api.run_attached({"id": "r1", "spec_options": {"args": ["/no/such"]}},
                                  rootfs=mounts, remove=True)
    with pytest.raises(CommandNotFound):
        while True:
            attachment.receive()
    attachment.close()
    wait_until(lambda: rd.client().containers() == [], timeout=10)
    assert leftovers(rd, "default", "r1") == []


def test_run_attach_client_leaving_removes_the_container(rd: RuntimeDaemon,
                                                         rootfs: Path) -> None:
    api = LeanClient(rd.address, namespace="default")
    mounts = [{"type": "bind", "source": str(rootfs), "options": ["rbind", "rw"]}]
    attachment = api.run_attached({"id": "r1", "spec_options": {"args": SLEEP}},
                                  rootfs=mounts, remove=True)
    assert isinstance(attachment.receive(), Started)
    attachment.close()
    wait_until(lambda: rd.client().containers() == [], timeout=15)
    assert leftovers(rd, "default", "r1") == []


def test_run_attach_refuses_a_first_message_that_is_no_run_request(rd: RuntimeDaemon) -> None:
    from runtime.client.attach import open_attachment

    api = LeanClient(rd.address, namespace="default")
    attachment = open_attachment(api, "/v1/run/attach?remove=1")
    attachment.ws.send_text('{"container": {"id": 5}}')
    with pytest.raises(InvalidArgument, match="invalid run request"):
        attachment.receive()
    attachment.close()
