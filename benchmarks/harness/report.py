"""The ratio table: Moorage / containerd for each figure, against its target."""

from __future__ import annotations

from typing import Any

from harness.cri_figures import CRI_TARGETS, cri_ratios

__all__ = ["TARGETS", "floors", "ratios", "render_markdown"]

#: figure -> (what, target ratio or None for "report")
TARGETS: dict[str, tuple[str, float | None]] = {
    "cold_pull": ("images pull of the large image, fresh filesystem, unpack included", 0.6),
    "warm_pull": ("images pull of the small image, present and unpacked", 1.0),
    "run_rm": ("run --rm IMAGE echo hi, warm image", 0.8),
    "burst": ("N detached containers started at once", 0.8),
    "teardown": ("kill and delete of those N", 0.8),
    "supervisor_rss": ("per-container supervisor RSS", 0.25),
    "supervisor_pss": ("per-container supervisor PSS", 0.25),
    "daemon_idle_rss": ("daemon RSS right after start", 1.0),
    "daemon_rss_with_n": ("daemon RSS with N running", 1.0),
    "daemon_start": ("daemon exec until it answers a first request, empty root", 3.0),
    "daemon_start_used": ("the same on the root it used before", 3.0),
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

    for fig in ("cold_pull", "warm_pull", "run_rm", "cli_round_trip"):
        if fig in results:
            put(fig, _median(results, fig, "moorage"), _median(results, fig, "containerd"))
    start = results.get("daemon_start", {})
    for fig, kind in (("daemon_start", "fresh"), ("daemon_start_used", "restart")):
        if kind in start:
            put(fig, _median(start, kind, "moorage"), _median(start, kind, "containerd"))
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


_DAEMON_IMPORTS = "python -c 'import <daemon imports>'"


def floors(results: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
    """What each figure's Moorage value cannot go below on this machine: (what, value).

    Measured with the install's interpreter (``floor_python``) and the other
    floor figures; a figure without a floor measured is left out.
    """
    python = results.get("floor_python", {}).get("floors", {})

    def py(name: str, key: str = "wall") -> float | None:
        value = python.get(name, {}).get(key)
        return float(value) if value is not None else None

    def median(fig: str, sub: str) -> float | None:
        value = results.get(fig, {}).get(sub, {}).get("median")
        return float(value) if value is not None else None

    out: dict[str, tuple[str, float | None]] = {
        "cold_pull": ("tar -xzf of the layers", median("cold_pull", "floor_tar_xzf")),
        "warm_pull": ("python -c pass (the client)", py("python -c pass")),
        "cli_round_trip": ("python -c pass (the client)", py("python -c pass")),
        "daemon_start": (_DAEMON_IMPORTS, py(_DAEMON_IMPORTS)),
        "daemon_start_used": (_DAEMON_IMPORTS, py(_DAEMON_IMPORTS)),
        "daemon_idle_rss": (f"RSS of {_DAEMON_IMPORTS}", py(_DAEMON_IMPORTS, "rss_kib")),
    }
    runc, client = median("floor_runc", "floor"), py("python -c pass")
    if runc is not None and client is not None:
        out["run_rm"] = ("runc run + python -c pass", runc + client)
    return {k: v for k, v in out.items() if v[1] is not None}


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
        "The floor is what Moorage's value cannot go below with this interpreter "
        "(see Floors); its ratio, the best ratio that floor leaves.",
        "",
        "| figure | what | moorage | containerd | ratio | target | met | floor | floor ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    under = floors(record["results"])
    for name, (what, target) in TARGETS.items():
        row = record["ratios"].get(name)
        if row is None:
            lines.append(f"| {name} | {what} | not measured | | | {target or 'report'} | | | |")
            continue
        ratio = row["ratio"]
        met = "" if target is None or ratio is None else ("yes" if ratio <= target else "NO")
        unit = " KiB" if "rss" in name or "pss" in name else " s"
        floor_what, floor = under.get(name, ("", None))
        floor_cell = f"{_fmt(floor, unit)} ({floor_what})" if floor is not None else ""
        lines.append(f"| {name} | {what} | {_fmt(row['moorage'], unit)} | "
                     f"{_fmt(row['containerd'], unit)} | {_fmt(ratio)} | "
                     f"{target if target is not None else 'report'} | {met} | {floor_cell} | "
                     f"{_fmt(_ratio(floor, row['containerd'])) if floor is not None else ''} |")
    lines += ["", "Floors (median seconds):", ""]
    for name in ("floor_sha256", "floor_gunzip", "floor_runc"):
        floor = record["results"].get(name, {}).get("floor", {})
        lines.append(f"- {name}: {_fmt(floor.get('median'))}")
    tar = record["results"].get("cold_pull", {}).get("floor_tar_xzf", {})
    lines.append(f"- tar -xzf of the large image's layers (fresh fs): {_fmt(tar.get('median'))}")
    py = record["results"].get("cli_round_trip", {}).get("floor_interpreter", {})
    lines.append(f"- python -c pass (the CLI's interpreter start, site included): "
                 f"{_fmt(py.get('median'))}")
    python = record["results"].get("floor_python", {})
    if python.get("floors"):
        lines += ["", f"Interpreter floors, `{python['python']} ARGS` (medians of "
                  f"{next(iter(python['floors'].values()))['n']}; wall, CPU, peak RSS):", ""]
        for name, r in python["floors"].items():
            lines.append(f"- `{name}`: {_fmt(r['wall'], ' s')}, CPU {_fmt(r['cpu'], ' s')}, "
                         f"RSS {_fmt(r['rss_kib'], ' KiB')}")
        imports = python.get("daemon_imports", [])
        packages = sorted({m.split(".")[0] for m in imports if not m.startswith("_")})
        lines.append(f"- the daemon's imports: {len(imports)} modules outside `runtime` "
                     f"(env FROZENLIST_NO_EXTENSIONS=1, SSL_CERT_FILE/DIR=/nonexistent), "
                     f"packages {', '.join(packages)}")
    for who, r in record["results"].get("warm_pull", {}).items():
        if isinstance(r, dict) and "median" in r:
            lines.append(f"- warm_pull {who}: client CPU "
                         f"{_fmt(r['user_median'] + r['system_median'], ' s')}, daemon CPU "
                         f"{_fmt(r.get('daemon_cpu_mean'), ' s')} (mean)")
    start = record["results"].get("daemon_start", {})
    for kind in ("fresh", "restart"):
        for who, r in start.get(kind, {}).items():
            if "median" in r:
                lines.append(f"- daemon_start {kind} {who}: answers after {_fmt(r['median'], ' s')}"
                             f" (listens after {_fmt(r['wall_median'], ' s')}), CPU "
                             f"{_fmt(r['cpu_to_answer_median'], ' s')}, RSS 1 s later "
                             f"{_fmt(r['rss_kb_1s_median'], ' KiB')}")
    errors = {k: v["error"] for k, v in record["results"].items()
              if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["", "Errors:", ""] + [f"- {k}: {v[:300]}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"
