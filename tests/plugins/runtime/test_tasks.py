"""Tasks on real runc through a real daemon: lifecycle, exec, signals, limits, restarts.

Each test gets its own daemon and a private busybox rootfs; see ``helpers.py``.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runtime.api.specs import SpecMount, SpecOptions
from runtime.client import Client
from runtime.client.attach import Exited, Output, Started
from runtime.core.errors import FailedPrecondition, NotFound
from runtime.plugins.snapshots.api import Mount
from tests.fixtures.daemon import assert_error
from tests.fixtures.system import require_binary
from tests.plugins.runtime.helpers import (
    RuntimeDaemon,
    cgroup_dirs,
    leftovers,
    monitor_pids,
    wait_until,
)

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

# sh as pid 1 ignores signals it has no handler for, so the tests install one.
TERM_42 = "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done"


def bind(rootfs: Path) -> list[Mount]:
    return [Mount(type="bind", source=str(rootfs), options=["rbind", "rw"])]


def run_task(api: Client, rootfs: Path, cid: str, script: str, *, start: bool = True,
             runtime: str = "runc", **options: object) -> None:
    """Create a container running ``sh -c script`` and its task; start it unless asked not to."""
    api.create_container(cid, runtime=runtime,
                         spec_options=SpecOptions(args=["sh", "-c", script], **options))
    api.create_task(cid, rootfs=bind(rootfs))
    if start:
        api.start_task(cid)


def output_of(api: Client, cid: str, exec_id: str = "") -> str:
    return "".join(e.data for e in api.task_logs(cid, exec_id))


def remove(api: Client, cid: str) -> None:
    api.delete_task(cid)
    api.delete_container(cid)


class TestLifecycle:
    def test_exit_code_output_and_event_order(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """create, start, exit, delete events in order; the exit code and output are kept."""
        api = rd.client()
        events = rd.events('topic~="^/(tasks|containers)/"')
        run_task(api, rootfs, "c1", "echo out; echo err >&2; exit 7")
        result = api.wait_task("c1", timeout=30)
        assert result.exit_status == 7
        assert result.exited_at is not None
        entries = list(api.task_logs("c1"))
        assert [(e.stream, e.data) for e in entries] == [("stdout", "out\n"), ("stderr", "err\n")]
        state = api.task("c1")
        assert (state.status, state.exit_status) == ("stopped", 7)
        assert api.delete_task("c1").exit_status == 7
        api.delete_container("c1")
        events.wait_for("/containers/delete", id="c1")
        assert events.topics("c1") == [
            "/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit",
            "/tasks/delete", "/containers/delete",
        ]
        exit_event = events.find("/tasks/exit", container_id="c1")
        assert exit_event is not None
        assert (exit_event["id"], exit_event["exit_status"]) == ("c1", 7)
        assert leftovers(rd, "default", "c1") == []

    def test_illegal_transitions_are_refused(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """containerd's runc state machine: each refusal names the state."""
        api = rd.client()
        run_task(api, rootfs, "c1", TERM_42, start=False)
        with pytest.raises(FailedPrecondition) as exc:
            api.pause_task("c1")
        assert assert_error(exc.value, "failed_precondition") == \
            "cannot pause task 'c1': it is created"
        with pytest.raises(FailedPrecondition, match="cannot exec in task 'c1': it is created"):
            api.exec_task("c1", "e1", ["true"])
        api.start_task("c1")
        with pytest.raises(FailedPrecondition, match="cannot start task 'c1': it is running"):
            api.start_task("c1")
        with pytest.raises(FailedPrecondition, match="cannot delete task 'c1': it is running"):
            api.delete_task("c1")
        with pytest.raises(FailedPrecondition, match="cannot resume task 'c1': it is running"):
            api.resume_task("c1")
        with pytest.raises(FailedPrecondition, match="still has a task"):
            api.delete_container("c1")
        api.kill_task("c1", "KILL")
        api.wait_task("c1", timeout=30)
        with pytest.raises(NotFound, match="already finished"):
            api.kill_task("c1", "TERM")
        remove(api, "c1")
        with pytest.raises(NotFound, match="task 'c1' not found"):
            api.task("c1")

    def test_created_task_can_be_deleted(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """A task that never started is killed, reports its exit, and is gone."""
        api = rd.client()
        events = rd.events('topic~="^/tasks/"')
        run_task(api, rootfs, "c1", "exit 0", start=False)
        result = api.delete_task("c1")
        assert result.exit_status == 137
        events.wait_for("/tasks/delete", container_id="c1")
        assert events.topics("c1") == ["/tasks/create", "/tasks/exit", "/tasks/delete"]
        api.delete_container("c1")
        assert leftovers(rd, "default", "c1") == []

    def test_task_create_conflicts(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        run_task(api, rootfs, "c1", "sleep 100", start=False)
        with pytest.raises(Exception) as exc:
            api.create_task("c1", rootfs=bind(rootfs))
        assert assert_error(exc.value, "already_exists") == "task 'c1' already exists"
        with pytest.raises(NotFound, match="container 'nope' not found"):
            api.create_task("nope", rootfs=bind(rootfs))
        api.delete_task("c1")


class TestSignalsAndProcesses:
    def test_kill_with_signal(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """The signal reaches the process: its handler's exit code comes back."""
        api = rd.client()
        run_task(api, rootfs, "c1", TERM_42)
        wait_until(lambda: "ready" in output_of(api, "c1"), what="ready")
        api.kill_task("c1", "SIGTERM")
        assert api.wait_task("c1", timeout=30).exit_status == 42
        remove(api, "c1")
        run_task(api, rootfs, "c2", "sleep 100")
        api.kill_task("c2", 9)
        assert api.wait_task("c2", timeout=30).exit_status == 137
        remove(api, "c2")

    def test_exec_into_running_task(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """An exec runs with its own output, exit code and events; pids name it."""
        api = rd.client()
        events = rd.events('topic~="^/tasks/"')
        run_task(api, rootfs, "c1", "sleep 100")
        api.exec_task("c1", "e1", ["sh", "-c", "echo in-exec; id -u; exit 3"], user="app")
        attachment = api.attach_task("c1", "e1", start=True)
        received, status = b"", None
        while status is None:
            message = attachment.receive()
            if isinstance(message, Output):
                received += message.data
            elif isinstance(message, Exited):
                status = message.exit_status
        attachment.close()
        assert (received, status) == (b"in-exec\n1000\n", 3)
        assert api.wait_task("c1", "e1", timeout=30).exit_status == 3
        assert output_of(api, "c1", "e1") == "in-exec\n1000\n"
        # A second, long-running exec shows up in the task's processes.
        api.exec_task("c1", "e2", ["sleep", "100"])
        api.start_task("c1", "e2")
        e2_pid = api.task("c1").execs[1].pid
        pids = {p.pid: p.exec_id for p in api.task_pids("c1")}
        assert pids[api.task("c1").pid] == ""
        assert pids[e2_pid] == "e2"
        api.kill_task("c1", "KILL", exec_id="e2")
        assert api.wait_task("c1", "e2", timeout=30).exit_status == 137
        assert api.delete_task("c1", "e1").exit_status == 3
        events.wait_for("/tasks/exit", id="e2")
        assert [t for t in events.topics() if "exec" in t or t == "/tasks/exit"][:4] == [
            "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/exec-added"]
        assert events.find("/tasks/exit", id="e1", exit_status=3) is not None
        assert [e.id for e in api.task("c1").execs] == ["e2"]
        api.kill_task("c1", "KILL")
        api.wait_task("c1", timeout=30)
        remove(api, "c1")

    def test_exec_of_missing_command_fails_with_runc_message(
        self, rd: RuntimeDaemon, rootfs: Path
    ) -> None:
        api = rd.client()
        run_task(api, rootfs, "c1", "sleep 100")
        api.exec_task("c1", "e1", ["no-such-command"])
        with pytest.raises(FailedPrecondition, match='"no-such-command": executable file not'):
            api.start_task("c1", "e1")
        api.kill_task("c1", "KILL")
        api.wait_task("c1", timeout=30)
        remove(api, "c1")

    def test_pause_and_resume(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """A paused task makes no progress and reports paused; resumed, it goes on."""
        api = rd.client()
        events = rd.events('topic~="^/tasks/(paused|resumed)"')
        run_task(api, rootfs, "c1", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done")
        wait_until(lambda: output_of(api, "c1").count("\n") >= 2, what="output")
        api.pause_task("c1")
        assert api.task("c1").status == "paused"
        frozen = output_of(api, "c1")
        time.sleep(0.5)
        assert output_of(api, "c1") == frozen
        with pytest.raises(FailedPrecondition, match="it is paused"):
            api.pause_task("c1")
        api.resume_task("c1")
        assert api.task("c1").status == "running"
        wait_until(lambda: output_of(api, "c1") != frozen, what="progress after resume")
        events.wait_for("/tasks/resumed", container_id="c1")
        assert events.topics("c1") == ["/tasks/paused", "/tasks/resumed"]
        api.kill_task("c1", "KILL")
        api.wait_task("c1", timeout=30)
        remove(api, "c1")


class TestResources:
    def test_pids_metrics_and_update(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """Limits from the spec are in the cgroup; metrics read them; update changes them."""
        api = rd.client()
        run_task(api, rootfs, "c1", "sleep 100 & sleep 100 & wait", memory=64 << 20, cpus=0.5)
        wait_until(lambda: len(api.task_pids("c1")) >= 3, what="three processes")
        metrics = api.task_metrics("c1")
        assert metrics.memory_limit_bytes == 64 << 20
        assert metrics.memory_usage_bytes > 0
        assert metrics.pids_current >= 3
        assert metrics.cpu_usage_usec > 0
        assert metrics.cgroup in ("v1", "v2", "hybrid")
        api.update_task("c1", {"memory": {"limit": 128 << 20}})
        assert api.task_metrics("c1").memory_limit_bytes == 128 << 20
        api.kill_task("c1", "KILL", all=True)
        api.wait_task("c1", timeout=30)
        remove(api, "c1")
        assert cgroup_dirs(rd, "default", "c1") == []

    def test_memory_limit_exceeded_gives_oom_event(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """A process over its memory limit is OOM-killed: /tasks/oom, then exit 137."""
        api = rd.client()
        events = rd.events('topic~="^/tasks/(oom|exit)"')
        grow = "awk 'BEGIN { s = \"x\"; while (1) s = s s }'"
        run_task(api, rootfs, "c1", grow, memory=32 << 20)
        result = api.wait_task("c1", timeout=60)
        events.wait_for("/tasks/exit", container_id="c1")
        events.wait_for("/tasks/oom", container_id="c1")
        assert events.topics("c1") == ["/tasks/oom", "/tasks/exit"]
        assert result.exit_status == 137
        remove(api, "c1")


class TestScale:
    def test_twenty_concurrent_tasks_run_and_clean_up(
        self, rd: RuntimeDaemon, rootfs: Path
    ) -> None:
        """20 tasks created, started, waited and deleted in parallel leave nothing behind."""
        ids = [f"par{i}" for i in range(20)]

        def one(cid: str) -> int:
            api = rd.client()
            number = int(cid.removeprefix("par"))
            run_task(api, rootfs, cid, f"echo {cid}; sleep 0.5; exit {number}")
            status = api.wait_task(cid, timeout=60).exit_status
            assert output_of(api, cid) == f"{cid}\n"
            remove(api, cid)
            return status

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(one, ids))
        assert statuses == list(range(20))
        for cid in ids:
            assert leftovers(rd, "default", cid) == []
        assert rd.client().tasks() == []


class TestRuntimes:
    def test_crun_fails_with_its_own_reason(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """crun refuses hybrid cgroup hosts; the task fails fast with crun's words."""
        require_binary("crun")  # skips locally, fails under CI
        api = rd.client()
        api.create_container("c1", runtime="crun", spec_options=SpecOptions(args=["true"]))
        hybrid = Path("/sys/fs/cgroup/unified").is_mount() and not Path(
            "/sys/fs/cgroup/cgroup.controllers").exists()
        started = time.monotonic()
        if not hybrid:
            api.create_task("c1", rootfs=bind(rootfs))
            api.delete_task("c1")
        else:
            with pytest.raises(FailedPrecondition) as exc:
                api.create_task("c1", rootfs=bind(rootfs))
            assert exc.value.message == (
                "crun create failed: cgroups in hybrid mode not supported, "
                "drop all controllers from cgroupv2")
        assert time.monotonic() - started < 30
        api.delete_container("c1")
        assert leftovers(rd, "default", "c1") == []


class TestRestart:
    def test_daemon_sigkill_and_restart(self, rd: RuntimeDaemon, rootfs: Path,
                                        tmp_path: Path) -> None:
        """Tasks survive a daemon crash; an exit missed meanwhile is reported after restart."""
        api = rd.client()
        gate = tmp_path / "gate"
        gate.mkdir()
        wait_for_gate = "while [ ! -e /gate/go ]; do sleep 0.05; done; echo leaving; exit 5"
        run_task(api, rootfs, "keep1", TERM_42)
        run_task(api, rootfs, "keep2", "sleep 100")
        run_task(api, rootfs, "dies", wait_for_gate,
                 mounts=[SpecMount(destination="/gate", source=str(gate))])
        pids = {cid: api.task(cid).pid for cid in ("keep1", "keep2", "dies")}
        wait_until(lambda: "ready" in output_of(api, "keep1"), what="keep1 ready")

        rd.kill()
        (gate / "go").touch()
        # The exit happens while no daemon runs; its monitor still records it.
        monitor_exit = rd.root / "runtime.runc" / "default" / "dies" / "exit"
        wait_until(monitor_exit.exists, what="the monitor recording the exit")
        wait_until(lambda: not monitor_pids(str(rd.state / "runtime.runc" / "default" / "dies")),
                   what="the monitor of 'dies' to end")
        assert Path(f"/proc/{pids['keep1']}").exists()
        rd.restart()

        api = rd.client()
        events = rd.events('topic~="^/tasks/"')
        exit_event = events.wait_for("/tasks/exit", container_id="dies")
        assert (exit_event["exit_status"], exit_event["pid"]) == (5, pids["dies"])
        dies = api.task("dies")
        assert (dies.status, dies.exit_status) == ("stopped", 5)
        assert api.wait_task("dies", timeout=10).exit_status == 5
        assert output_of(api, "dies") == "leaving\n"
        # Its runtime state, mounts and monitor files were released at restart.
        bundle = rd.state / "runtime.runc" / "default" / "dies"
        assert not bundle.exists()
        runc_state = subprocess.run(
            ["runc", "--root", str(rd.state / "runc-root" / "default"), "state", "dies"],
            capture_output=True, check=False)
        assert runc_state.returncode != 0
        assert cgroup_dirs(rd, "default", "dies") == []

        # The two others are still running and fully controllable.
        assert {api.task(c).status for c in ("keep1", "keep2")} == {"running"}
        api.exec_task("keep2", "e1", ["sh", "-c", "exit 4"])
        api.start_task("keep2", "e1")
        assert api.wait_task("keep2", "e1", timeout=30).exit_status == 4
        api.pause_task("keep2")
        api.resume_task("keep2")
        api.kill_task("keep1", "TERM")
        assert api.wait_task("keep1", timeout=30).exit_status == 42
        events.wait_for("/tasks/exit", container_id="keep1", exit_status=42)
        api.kill_task("keep2", "KILL")
        assert api.wait_task("keep2", timeout=30).exit_status == 137
        for cid in ("keep1", "keep2", "dies"):
            remove(api, cid)
            assert leftovers(rd, "default", cid) == []
        # No exit was reported twice.
        assert events.topics("dies").count("/tasks/exit") == 1

    def test_lost_monitor_reports_255_and_kills_the_process(
        self, rd: RuntimeDaemon, rootfs: Path
    ) -> None:
        """A monitor killed from outside leaves no unsupervised process and no silent task."""
        api = rd.client()
        events = rd.events('topic~="^/tasks/exit"')
        run_task(api, rootfs, "c1", "sleep 100")
        pid = api.task("c1").pid
        [monitor] = monitor_pids(str(rd.state / "runtime.runc" / "default" / "c1"))
        os.kill(monitor, signal.SIGKILL)
        assert events.wait_for("/tasks/exit", container_id="c1")["exit_status"] == 255
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), what="the orphan to be killed")
        remove(api, "c1")
        assert leftovers(rd, "default", "c1") == []

    def test_monitor_survives_a_clean_daemon_stop(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """SIGTERM stops the daemon, not the tasks (as containerd's shims)."""
        api = rd.client()
        run_task(api, rootfs, "c1", "sleep 100")
        pid = api.task("c1").pid
        rd.daemon.stop()
        assert Path(f"/proc/{pid}").exists()
        rd.restart()
        api = rd.client()
        assert api.task("c1").status == "running"
        api.kill_task("c1", "KILL")
        assert api.wait_task("c1", timeout=30).exit_status == 137
        remove(api, "c1")
        assert leftovers(rd, "default", "c1") == []


class TestTerminal:
    def test_tty_attach_resize_and_stdin(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """A terminal task: input reaches the shell, resize reaches the pty."""
        api = rd.client()
        api.create_container("c1", spec_options=SpecOptions(args=["sh"], terminal=True))
        api.create_task("c1", rootfs=bind(rootfs), stdin=True)
        attachment = api.attach_task("c1", stdin=True, start=True)
        assert isinstance(attachment.receive(), Started)
        attachment.resize(123, 45)
        time.sleep(0.2)
        attachment.send_stdin(b"stty size; tty; exit 9\n")
        received, status = b"", None
        while status is None:
            message = attachment.receive()
            if isinstance(message, Output):
                received += message.data
            elif isinstance(message, Exited):
                status = message.exit_status
        attachment.close()
        assert status == 9
        assert b"45 123" in received
        assert b"/dev/pts/0" in received
        remove(api, "c1")

    def test_close_stdin_gives_eof(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        api.create_container("c1", spec_options=SpecOptions(args=["sh", "-c", "cat; exit 3"]))
        api.create_task("c1", rootfs=bind(rootfs), stdin=True)
        attachment = api.attach_task("c1", stdin=True, start=True)
        attachment.send_stdin(b"line\n")
        attachment.close_stdin()
        received, status = b"", None
        while status is None:
            message = attachment.receive()
            if isinstance(message, Output):
                received += message.data
            elif isinstance(message, Exited):
                status = message.exit_status
        attachment.close()
        assert (received, status) == (b"line\n", 3)
        remove(api, "c1")


def test_user_names_resolve_in_the_rootfs(rd: RuntimeDaemon, rootfs: Path) -> None:
    """``app`` comes from the image's /etc/passwd, with its groups and HOME."""
    api = rd.client()
    run_task(api, rootfs, "c1", 'id; echo "$HOME"', user="app")
    assert api.wait_task("c1", timeout=30).exit_status == 0
    # busybox's id lists the supplementary groups only.
    assert output_of(api, "c1") == "uid=1000(app) gid=1000(app) groups=100(users)\n/home/app\n"
    remove(api, "c1")
    with pytest.raises(Exception) as exc:
        run_task(api, rootfs, "c2", "true", user="nobody-here")
    assert assert_error(exc.value, "invalid_argument") == \
        "unable to find user 'nobody-here' in the container's /etc/passwd"
    api.delete_container("c2")
    assert leftovers(rd, "default", "c2") == []
    assert os.listdir(rd.state / "runtime.runc" / "default") == []


class TestRunInOneCall:
    """``POST /v1/run`` and ``DELETE /v1/run/{id}``: what ``moorage run`` and ``rm -f`` use."""

    def test_run_starts_and_remove_needs_force(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        state = api.run({"id": "c1", "spec_options": {"args": ["sh", "-c", TERM_42]}},
                        rootfs=bind(rootfs), start=True)
        assert (state.container_id, state.status) == ("c1", "running")
        assert state.pid > 0
        with pytest.raises(FailedPrecondition, match="'c1' still has a task"):
            api.remove("c1")
        api.remove("c1", force=True)
        assert api.containers() == []
        with pytest.raises(NotFound):
            api.task("c1")
        with pytest.raises(NotFound, match="container 'c1' not found"):
            api.remove("c1", force=True)
        assert leftovers(rd, "default", "c1") == []

    def test_run_without_start_leaves_a_created_task(self, rd: RuntimeDaemon,
                                                     rootfs: Path) -> None:
        api = rd.client()
        state = api.run({"id": "c1", "spec_options": {"args": ["true"]}}, rootfs=bind(rootfs))
        assert state.status == "created"
        api.start_task("c1")
        assert api.wait_task("c1", timeout=30).exit_status == 0
        with pytest.raises(FailedPrecondition, match="'c1' still has a task"):
            api.remove("c1")
        api.delete_task("c1")
        api.remove("c1")
        assert leftovers(rd, "default", "c1") == []

    def test_failed_run_undoes_the_container(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        api = rd.client()
        with pytest.raises(FailedPrecondition, match="no-such-command"):
            api.run({"id": "c1", "spec_options": {"args": ["no-such-command"]}},
                    rootfs=bind(rootfs), start=True)
        assert api.containers() == []
        assert leftovers(rd, "default", "c1") == []

    def test_run_of_an_existing_container_is_refused(self, rd: RuntimeDaemon,
                                                     rootfs: Path) -> None:
        api = rd.client()
        run_task(api, rootfs, "c1", "sleep 100", start=False)
        with pytest.raises(Exception, match="already exists"):
            api.run({"id": "c1", "spec_options": {"args": ["true"]}}, rootfs=bind(rootfs))
        api.remove("c1", force=True)

    def test_remove_takes_the_snapshot_along_unless_asked(self, rd: RuntimeDaemon) -> None:
        """As ``ctr containers rm``: the container's snapshot goes with it."""
        api = rd.client()
        for cid in ("c1", "c2"):
            api.prepare_snapshot("native", f"{cid}-root")
            api.create_container(cid, snapshotter="native", snapshot_key=f"{cid}-root",
                                 spec_options=SpecOptions(args=["true"]))
        api.remove("c1", snapshot=True)
        api.remove("c2")
        assert {s.name for s in api.snapshots("native")} == {"c2-root"}
        assert api.containers() == []

    def test_forced_task_delete_kills_and_waits(self, rd: RuntimeDaemon, rootfs: Path) -> None:
        """``DELETE /v1/tasks/{id}?force=1``, through the standard-library client."""
        from runtime.client.lean import LeanClient

        api, lean = rd.client(), LeanClient(rd.address)
        run_task(api, rootfs, "c1", TERM_42)
        assert lean.delete_task("c1", force=True).exit_status == 137
        with pytest.raises(NotFound, match="task 'c1' not found"):
            lean.delete_task("c1", force=True)
        lean.delete_container("c1")
        assert leftovers(rd, "default", "c1") == []
