"""Resident and proportional set sizes of processes, from /proc."""

from __future__ import annotations

from pathlib import Path

__all__ = ["children_of", "pss_kib", "rss_kib"]


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Pss of ``pid`` in KiB (shared pages divided among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def pids_named(name: str, marker: str = "") -> list[int]:
    """Pids whose command name (comm) is ``name`` and whose command line holds ``marker``.

    The marker (a daemon's base directory) keeps out the supervisors of other
    daemons on the machine, such as those of a test run going on meanwhile.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() != name:
                    continue
                if marker and marker.encode() not in (proc / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
            found.append(int(proc.name))
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
    return found
