"""The CRI rows of the ratio table (``bench_cri.py``, ``run.py --cri``): targets and ratios."""

from __future__ import annotations

from typing import Any

__all__ = ["CRI_TARGETS", "cri_ratios"]

#: figure -> (what, target ratio or None to report only)
CRI_TARGETS: dict[str, tuple[str, float | None]] = {
    "cri_pods_up": ("CRI: RunPodSandbox+CreateContainer+StartContainer, N pods at once", 0.8),
    "cri_pods_down": ("CRI: Stop/Remove of those N pods", 0.8),
    "cri_exec_sync": ("CRI: M sequential ExecSync of true", 1.0),
    "cri_exec_stream": ("CRI: M sequential Exec + SPDY stream of true", 1.0),
    "cri_exec_websocket": ("CRI: M sequential Exec + websocket stream of true", 1.0),
    "cri_idle_rss": ("CRI: daemon RSS, CRI loaded, idle, no client", 1.0),
    "cri_rss_with_pods": ("CRI: daemon RSS with N pods running", None),
}


def cri_ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Moorage, containerd and their ratio for each CRI figure measured."""
    out: dict[str, dict[str, float | None]] = {}
    for key in CRI_TARGETS:
        node = results.get(key.removeprefix("cri_"), {})
        m = node.get("moorage", {}).get("median")
        c = node.get("containerd", {}).get("median")
        if m is None and c is None:
            continue
        out[key] = {"moorage": m, "containerd": c,
                    "ratio": m / c if m is not None and c else None}
    return out
