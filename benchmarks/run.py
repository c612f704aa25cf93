"""Moorage against containerd, side by side on this machine: ``python benchmarks/run.py``.

Builds the images (cached), starts a registry on 127.0.0.1, measures every
figure for both runtimes (never both busy at once), prints the ratio table and
writes JSON and markdown to ``benchmarks/results/``. ``--quick`` runs fewer
repetitions; ``--only a,b`` picks figures; ``--cri`` adds the CRI figures of
``bench_cri.py`` (both daemons with their CRI on; a few minutes more). The
interpreter's floors (``floor_python``, a few seconds) are measured with any
choice of figures: the table shows each figure's floor beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness.bigimage import build_big_image, image_stats  # noqa: E402
from harness.daemons import Moorage  # noqa: E402
from harness.figures import FIGURES, Context  # noqa: E402
from harness.install import venv_bin  # noqa: E402
from harness.report import ratios, render_markdown  # noqa: E402

from tests.fixtures.images import busybox_image  # noqa: E402
from tests.fixtures.registry import Registry  # noqa: E402


def versions() -> dict[str, str]:
    """Versions of everything compared."""
    def first_line(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "unavailable"

    import runtime

    return {
        "moorage": runtime.__version__,
        "containerd": first_line("containerd", "--version"),
        "runc": first_line("runc", "--version"),
        "conmon": first_line("conmon", "--version"),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
    }


def compile_bytecode() -> None:
    """Byte-compile the package, as installing a wheel does.

    An editable install leaves only sources, and with PYTHONDONTWRITEBYTECODE
    (set on this machine) every ``moorage`` process would compile each module it
    imports: that measures the compiler, not Moorage. containerd's binaries are
    compiled too; existing ``.pyc`` files are read even with that variable set.
    """
    import compileall

    compileall.compile_dir(str(HERE.parent / "runtime"), quiet=1)


def main() -> int:
    """Run the benchmark; exit 0 even when a figure fails (the report says which)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated figure names")
    parser.add_argument("--install", choices=("venv", "editable"), default="venv",
                        help="measure a wheel of this tree in a venv (default; see "
                             "harness/install.py) or the development install")
    parser.add_argument("--cri", action="store_true",
                        help="also measure the CRI side by side (bench_cri.py)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figures {', '.join(unknown)} (known: {', '.join(FIGURES)})")
    if "floor_python" not in names:
        names.append("floor_python")

    started = time.monotonic()
    compile_bytecode()
    if args.install == "venv":
        Moorage.bin_dir = venv_bin()
    big_layout = build_big_image()
    work = Path(tempfile.mkdtemp(prefix="mb-", dir="/var/tmp"))
    small = busybox_image(work / "busybox")
    small_rootfs = work / "busybox-rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--rootless", "--image", small.umoci_ref,
                    str(small_rootfs)], check=True, capture_output=True)
    results: dict[str, object] = {}
    with Registry(work / "registry") as registry:
        big_ref = registry.push_layout(big_layout, "big", "bench/big:latest")
        small_ref = registry.push_layout(small, small.ref_name, "bench/busybox:latest")
        ctx = Context(big_ref, small_ref, big_layout, small_rootfs, args.quick)
        try:
            for name in names:
                print(f"== {name}", file=sys.stderr, flush=True)
                try:
                    results[name] = FIGURES[name](ctx)
                except Exception as exc:
                    traceback.print_exc()
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for daemon in ctx.warm.values():
                daemon.stop()
                daemon.wipe()
        results["daemon_idle_rss_kib"] = ctx.extra.get("daemon_idle_rss_kib", {})
    if args.cri:
        from bench_cri import measure_cri

        print("== cri", file=sys.stderr, flush=True)
        try:
            results["cri"] = (measure_cri(reps=2, rss_reps=1) if args.quick
                              else measure_cri())
        except Exception as exc:
            traceback.print_exc()
            results["cri"] = {"error": f"{type(exc).__name__}: {exc}"}
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "date": datetime.now(UTC).isoformat(),
        "machine": {"nproc": subprocess.run(["nproc"], capture_output=True, text=True)
                    .stdout.strip(), "platform": platform.platform()},
        "versions": versions(),
        "image": image_stats(big_layout),
        "quick": args.quick,
        "install": args.install,
        "results": results,
        "ratios": ratios(results),
        "seconds": round(time.monotonic() - started, 1),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{stamp}.json").write_text(json.dumps(record, indent=2))
    markdown = render_markdown(record)
    (out / f"{stamp}.md").write_text(markdown)
    (out / "latest.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
