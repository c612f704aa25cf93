"""Repeated measurements: wall time plus the user and system CPU of child processes."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sample", "Series", "measure"]


@dataclass
class Sample:
    """One repetition: seconds of wall time, and CPU seconds of the children it ran."""

    wall: float
    user: float = 0.0
    system: float = 0.0
    #: CPU seconds the daemon spent meanwhile (clock ticks: read means, not medians).
    daemon: float = 0.0


@dataclass
class Series:
    """All repetitions of one figure for one runtime."""

    samples: list[Sample] = field(default_factory=list)
    unit: str = "s"

    def add(self, sample: Sample) -> None:
        """Record one repetition."""
        self.samples.append(sample)

    @property
    def median(self) -> float:
        """Median wall value."""
        return statistics.median(s.wall for s in self.samples) if self.samples else float("nan")

    def summary(self) -> dict[str, Any]:
        """Median, min, max and CPU medians, for the report."""
        if not self.samples:
            return {"n": 0}
        walls = [s.wall for s in self.samples]
        out: dict[str, Any] = {
            "n": len(walls),
            "unit": self.unit,
            "median": statistics.median(walls),
            "min": min(walls),
            "max": max(walls),
            "user_median": statistics.median(s.user for s in self.samples),
            "system_median": statistics.median(s.system for s in self.samples),
        }
        if any(s.daemon for s in self.samples):
            out["daemon_cpu_mean"] = statistics.mean(s.daemon for s in self.samples)
        return out


def _children() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def measure(fn: Callable[[], Any], daemon: int | None = None) -> Sample:
    """Time ``fn`` (which runs child processes) on the wall clock and in child CPU.

    Only children that have been waited for count towards CPU, which is true of
    every ``subprocess.run``; daemons running in the background are not counted
    there: ``daemon`` (a pid) has its own CPU meanwhile read from /proc.
    """
    d0 = sum(proc_cpu(daemon)) if daemon else 0.0
    u0, s0 = _children()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    u1, s1 = _children()
    d1 = sum(proc_cpu(daemon)) if daemon else 0.0
    return Sample(wall=wall, user=u1 - u0, system=s1 - s0, daemon=d1 - d0)


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a (still running) process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick
