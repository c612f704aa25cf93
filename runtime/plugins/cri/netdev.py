"""Interface counters of a pod's network namespace, from ``/proc/net/dev`` read inside it.

Used by PodSandboxStats (its ``network``) and the pod metrics
(``container_network_*``).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from runtime.pkg.namespaces import enter_netns, in_fresh_thread

__all__ = ["InterfaceCounters", "read_net_dev"]


class InterfaceCounters(msgspec.Struct, frozen=True, kw_only=True):
    """One interface's counters from ``/proc/net/dev``."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def read_net_dev(netns: str) -> list[InterfaceCounters]:
    """The counters of every interface but ``lo`` in the network namespace at ``netns``.

    Blocking: a fresh thread joins the namespace (``setns`` changes only the calling
    thread) and reads ``/proc/thread-self/net/dev``, which shows that thread's.
    """
    text: list[str] = []

    def read() -> None:
        enter_netns(netns)
        text.append(Path("/proc/thread-self/net/dev").read_text())

    in_fresh_thread("cri-net-dev", read)
    found = []
    for line in text[0].splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) < 16 or name.strip() == "lo" or not all(f.isdigit() for f in fields):
            continue
        values = [int(f) for f in fields]
        found.append(InterfaceCounters(
            name=name.strip(), rx_bytes=values[0], rx_packets=values[1], rx_errors=values[2],
            rx_dropped=values[3], tx_bytes=values[8], tx_packets=values[9],
            tx_errors=values[10], tx_dropped=values[11]))
    return found
