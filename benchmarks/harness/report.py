"""The ratio table: Moorage / containerd for each figure, against its target."""

from __future__ import annotations

from typing import Any

from harness.cri_figures import CRI_TARGETS, cri_ratios

__all__ = ["TARGETS", "ratios", "render_markdown"]

#: figure -> (what, target ratio or None for "report")
TARGETS: dict[str, tuple[str, float | None]] = {
    "cold_pull": ("images pull of the large image, fresh filesystem, unpack included", 0.6),
    "run_rm": ("run --rm IMAGE echo hi, warm image", 0.8),
    "burst": ("N detached containers started at once", 0.8),
    "teardown": ("kill and delete of those N", 0.8),
    "supervisor_rss": ("per-container supervisor RSS", 0.25),
    "supervisor_pss": ("per-container supervisor PSS", 0.25),
    "daemon_idle_rss": ("daemon RSS right after start", 1.0),
    "daemon_rss_with_n": ("daemon RSS with N running", 1.0),
    "cli_round_trip": ("version against a running daemon", None),
    **CRI_TARGETS,
}


def _median(results: dict[str, Any], figure: str, who: str, sub: str = "") -> float | None:
    node = results.get(figure, {})
    if sub:
        node = node.get(sub, {})
    value = node.get(who, {}).get("median") if isinstance(node, dict) else None
    return float(value) if value is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Moorage and containerd values and their ratio for each figure measured."""
    out: dict[str, dict[str, float | None]] = {}

    def put(name: str, moorage: float | None, containerd: float | None) -> None:
        out[name] = {"moorage": moorage, "containerd": containerd,
                     "ratio": _ratio(moorage, containerd)}

    for fig in ("cold_pull", "run_rm", "cli_round_trip"):
        if fig in results:
            put(fig, _median(results, fig, "moorage"), _median(results, fig, "containerd"))
    bt = results.get("burst_teardown", {})
    if "burst" in bt:
        put("burst", _median(bt, "burst", "moorage"), _median(bt, "burst", "containerd"))
        put("teardown", _median(bt, "teardown", "moorage"), _median(bt, "teardown", "containerd"))
        mem = bt.get("memory", {})
        m, c = mem.get("moorage", {}), mem.get("containerd", {})
        put("supervisor_rss", m.get("rss_kib_mean"), c.get("rss_kib_mean"))
        put("supervisor_pss", m.get("pss_kib_mean"), c.get("pss_kib_mean"))
        put("daemon_rss_with_n", m.get("daemon_rss_kib_with_n"), c.get("daemon_rss_kib_with_n"))
    idle = results.get("daemon_idle_rss_kib", {})
    if idle:
        put("daemon_idle_rss", idle.get("moorage"), idle.get("containerd"))
    out.update(cri_ratios(results.get("cri", {})))
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}{unit}" if value < 100 else f"{value:,.0f}{unit}"


def render_markdown(record: dict[str, Any]) -> str:
    """The run as a markdown report: context, ratio table, floors, errors."""
    lines = [
        f"# Moorage vs containerd — {record['date']}",
        "",
        f"Machine: {record['machine']['nproc']} cores, {record['machine']['platform']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()) + ".  ",
        f"Large image: {record['image']['uncompressed_bytes'] / 1e6:.0f} MB uncompressed, "
        f"{record['image']['entries']} entries. Quick mode: {record['quick']}. "
        f"Moorage installed: {record.get('install', 'editable')}. "
        f"Run took {record['seconds']} s.",
        "",
        "| figure | what | moorage | containerd | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (what, target) in TARGETS.items():
        row = record["ratios"].get(name)
        if row is None:
            lines.append(f"| {name} | {what} | not measured | | | {target or 'report'} | |")
            continue
        ratio = row["ratio"]
        met = "" if target is None or ratio is None else ("yes" if ratio <= target else "NO")
        unit = " KiB" if "rss" in name or "pss" in name else " s"
        lines.append(f"| {name} | {what} | {_fmt(row['moorage'], unit)} | "
                     f"{_fmt(row['containerd'], unit)} | {_fmt(ratio)} | "
                     f"{target if target is not None else 'report'} | {met} |")
    lines += ["", "Floors (median seconds):", ""]
    for name in ("floor_sha256", "floor_gunzip", "floor_runc"):
        floor = record["results"].get(name, {}).get("floor", {})
        lines.append(f"- {name}: {_fmt(floor.get('median'))}")
    tar = record["results"].get("cold_pull", {}).get("floor_tar_xzf", {})
    lines.append(f"- tar -xzf of the large image's layers (fresh fs): {_fmt(tar.get('median'))}")
    py = record["results"].get("cli_round_trip", {}).get("floor_interpreter", {})
    lines.append(f"- python -c pass (the CLI's interpreter start, site included): "
                 f"{_fmt(py.get('median'))}")
    errors = {k: v["error"] for k, v in record["results"].items()
              if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["", "Errors:", ""] + [f"- {k}: {v[:300]}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"
