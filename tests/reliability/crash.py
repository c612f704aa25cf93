"""The crash rig: kill a daemon at a fault point, restart it, check what it finds.

A :class:`Scenario` is an operation that passes some fault points; each point it passes
makes one :class:`Case`. :class:`CrashRig` runs the cases of a module in order on one
daemon root, so the store accumulates what every earlier crash left behind:

1. **setup** (optional) runs in a life of the daemon that will not die of it;
2. the daemon runs armed with the case's point (``MOORAGE_FAULTS``) and **trigger**
   calls the operation, which must kill it (exit by ``SIGKILL``);
3. the daemon restarts, :func:`~.store_check.check_store` must find the store
   consistent, every sentinel task still runs, and **verify** repeats the operation
   (which must now succeed) and checks its effects.

Daemon starts dominate the cost, so one start does two jobs when it can: the restart
after case *i* is already armed with the point of case *i+1*, unless case *i*'s verify or
case *i+1*'s setup would pass that point (declared in :attr:`Scenario.verify_touches`
and :attr:`Scenario.setup_touches`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime.client import Client
from runtime.core.errors import MoorageError
from runtime.core.faults import ENV_VAR
from tests.fixtures.daemon import Daemon
from tests.reliability.store_check import StoreReport, assert_store_ok

__all__ = ["RIG_CONFIG", "Case", "CrashRig", "Ctx", "Scenario", "cases"]

#: No collection runs unless a test asks: a background one would pass GC fault points
#: (and the snapshotters' remove) at moments no scenario chose.
RIG_CONFIG = """
disabled_plugins = ["network.cni", "api.networks", "metrics.prometheus", "api.metrics",
                    "runtime.crun"]

[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000
pause_threshold = 0.0001

[plugins."runtime.runc"]
exit_publish_grace = 0.5
"""

#: Namespace the scenarios work in.
NAMESPACE = "crash"


@dataclass
class Ctx:
    """What a scenario's steps get.

    Attributes:
        rig: The rig (its daemon, rootfs, registry).
        tag: Unique per case (``c17``): scenarios name their objects with it.
        point: The fault point the case is about.
        data: Scratch space from trigger to verify.
    """

    rig: CrashRig
    tag: str
    point: str
    data: dict[str, Any] = field(default_factory=dict)

    def client(self, namespace: str = NAMESPACE) -> Client:
        """A client of the current daemon life, with a bounded timeout."""
        return Client(self.rig.daemon.address, namespace=namespace, timeout=60.0)


Step = Callable[[Ctx], None]


@dataclass(frozen=True)
class Scenario:
    """An operation to kill the daemon in, at each of the fault points it passes.

    Attributes:
        name: Short id, used in test ids.
        points: The fault points the trigger passes (one case each).
        trigger: Calls the operation; the armed daemon must die in it.
        verify: After the restart: repeat the operation and check its effects.
        setup: Prepares what the trigger needs (runs unarmed, or armed with a point
            it does not pass).
        setup_touches: Prefixes of the fault points ``setup`` may pass.
        verify_touches: Prefixes of the fault points ``verify`` may pass.
        early: ``setup`` depends on nothing earlier cases do: run it for every case of
            the scenario before the first kill (no restart just to set up).
    """

    name: str
    points: tuple[str, ...]
    trigger: Step
    verify: Step
    setup: Step | None = None
    setup_touches: tuple[str, ...] = ()
    verify_touches: tuple[str, ...] = ()
    early: bool = False

    def setup_passes(self, point: str | None) -> bool:
        """Whether ``setup`` may pass ``point`` (and so must not run armed with it)."""
        if self.early:
            return False
        return bool(point and self.setup_touches and point.startswith(self.setup_touches))

    def verify_passes(self, point: str | None) -> bool:
        """Whether ``verify`` may pass ``point``."""
        return bool(point and self.verify_touches and point.startswith(self.verify_touches))


@dataclass(frozen=True)
class Case:
    """One kill: a scenario at one of its fault points."""

    scenario: Scenario
    point: str
    index: int

    @property
    def id(self) -> str:
        """``<point>-<scenario>``, the pytest id."""
        return f"{self.point}-{self.scenario.name}"


def cases(scenarios: Sequence[Scenario]) -> list[Case]:
    """Every (point, scenario) pair, ordered so that most restarts can be armed in advance.

    Greedy: the next case is taken from the longest queue among those whose setup does
    not pass the case's own point and that the previous case's verify does not pass;
    the order is the same on every run.
    """
    queues = [[(s, p) for p in s.points] for s in scenarios]
    ordered: list[tuple[Scenario, str]] = []
    previous: Scenario | None = None

    def fits(queue: list[tuple[Scenario, str]]) -> bool:
        scenario, point = queue[0]
        return not (scenario.setup_passes(point)
                    or (previous is not None and previous.verify_passes(point)))

    while any(queues):
        waiting = [q for q in queues if q]
        queue = max([q for q in waiting if fits(q)] or waiting, key=len)
        ordered.append(queue.pop(0))
        previous = ordered[-1][0]
    return [Case(s, p, i) for i, (s, p) in enumerate(ordered)]


class CrashRig:
    """One daemon root on which cases kill and restart a daemon in turn.

    Args:
        tmp_path: Directory of the daemon's config, log and root.
        all_cases: The module's cases, in order (to arm the next one early).
        config: Extra TOML for the daemon.
    """

    def __init__(self, tmp_path: Path, all_cases: Sequence[Case], config: str = RIG_CONFIG) -> None:
        self.daemon = Daemon(tmp_path / "daemon", config, startup_timeout=60.0)
        self.cases = list(all_cases)
        self.armed: str | None = None
        self.rootfs: Path | None = None
        self.registry: Any = None
        #: ``(namespace, container id) -> pid`` of tasks that must survive every crash.
        self.sentinels: dict[tuple[str, str], int] = {}
        self.starts = 0
        self.kills = 0
        self.last_report: StoreReport | None = None
        #: Seconds spent per phase over all cases (setup, trigger, restart, check, verify).
        self.timings: dict[str, float] = {}

    def _timed(self, phase: str, started: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.monotonic() - started

    # -- daemon lives --------------------------------------------------------------

    def _start(self, armed: str | None) -> None:
        self.daemon.env = {ENV_VAR: armed} if armed else {}
        self.daemon.start()
        self.armed = armed
        self.starts += 1

    def life(self, armed: str | None) -> None:
        """Make sure a daemon runs armed with exactly ``armed`` (``None``: unarmed).

        An idle daemon is replaced by SIGKILL, not SIGTERM: it is faster, and one more
        crash (at a quiet moment) that the store must take.
        """
        if self.daemon.running and self.armed == armed:
            return
        if self.daemon.running:
            self.daemon.kill()
        self._start(armed)

    def set_up_early(self) -> None:
        """Run the setup of every case whose scenario is ``early``, in an unarmed life."""
        self.life(None)
        for case in self.cases:
            if case.scenario.early and case.scenario.setup is not None:
                case.scenario.setup(self._ctx(case))

    def _ctx(self, case: Case) -> Ctx:
        return Ctx(self, f"c{case.index}", case.point)

    def client(self, namespace: str = NAMESPACE) -> Client:
        """A client of the current life."""
        return Client(self.daemon.address, namespace=namespace, timeout=60.0)

    def close(self) -> None:
        """Stop the daemon (tasks are the caller's to remove first)."""
        self.daemon.close()

    # -- one case ------------------------------------------------------------------

    def run(self, case: Case) -> StoreReport:
        """Kill the daemon at ``case.point`` in its scenario, restart, check, verify."""
        scenario = case.scenario
        ctx = self._ctx(case)
        started = time.monotonic()
        if scenario.setup is not None and not scenario.early:
            if scenario.setup_passes(self.armed) or not self.daemon.running:
                self.life(None)
            scenario.setup(ctx)
        self.life(case.point)
        self._timed("setup", started)
        started = time.monotonic()
        outcome = "returned normally"
        try:
            scenario.trigger(ctx)
        except (MoorageError, OSError) as exc:
            # The connection breaks when the daemon dies under the request; any other
            # error means the operation failed before it reached the point.
            outcome = f"failed: {type(exc).__name__}: {exc}"
        broken = "cannot reach the moorage daemon" in outcome or "Connection" in outcome
        code = self._wait_for_death(case.point, 60.0 if broken else 5.0, outcome)
        self.kills += 1
        self._timed("trigger", started)
        assert code == -9, f"daemon exited with {code}, not SIGKILL, at {case.point}"
        following = self._following(case)
        armed_next = following.point if following is not None and not (
            scenario.verify_passes(following.point)
            or following.scenario.setup_passes(following.point)
        ) else None
        started = time.monotonic()
        self._start(armed_next)
        self._timed("restart", started)
        started = time.monotonic()
        report = assert_store_ok(self.daemon, context=f"a kill at {case.id}")
        self.check_sentinels(case.id)
        self._timed("check", started)
        started = time.monotonic()
        scenario.verify(ctx)
        self.last_report = assert_store_ok(self.daemon, context=f"verifying {case.id}")
        self._timed("verify", started)
        return report

    def _following(self, case: Case) -> Case | None:
        later = [c for c in self.cases if c.index > case.index]
        return later[0] if later else None

    def _wait_for_death(self, point: str, timeout: float, outcome: str) -> int:
        proc = self.daemon.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                self.daemon.kill()
                pytest.fail(f"fault point {point} was not reached (the operation {outcome}):\n"
                            + "\n".join(self.daemon.log().splitlines()[-20:]))
            time.sleep(0.01)
        return self.daemon.wait()

    # -- sentinels -------------------------------------------------------------------

    def add_sentinel(self, namespace: str, container_id: str, pid: int) -> None:
        """A task that must keep running, with the same pid, through every crash."""
        self.sentinels[(namespace, container_id)] = pid

    def check_sentinels(self, context: str) -> None:
        """Fail unless every sentinel task still runs as the same process."""
        for (namespace, container_id), pid in self.sentinels.items():
            task = self.client(namespace).task(container_id)
            assert (task.status, task.pid) == ("running", pid), (
                f"sentinel {container_id} after {context}: {task.status} pid {task.pid}, "
                f"was running as {pid}"
            )
            assert Path(f"/proc/{pid}").exists(), f"sentinel process {pid} is gone ({context})"

