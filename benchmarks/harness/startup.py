"""A daemon's start, timed from exec until it answers, and the interpreter floors under it.

Shared by ``run.py`` (the ``daemon_start`` figure and the floors of the
report) and ``short_ops.py`` (its ``start`` and ``floor`` operations).

* :func:`time_start` execs a daemon and times it until its API socket
  accepts a connection and until it answers a first request: Moorage
  ``GET /v1/version``, containerd the HTTP/2 preface (a connection its gRPC
  server serves). A socket bound before the server runs accepts connections
  it does not answer yet; what a client waits for is the answer.
* :func:`daemon_imports` lists the modules outside ``runtime`` that the
  Moorage daemon has imported by the time it answers (``-X importtime`` of
  one start), and :func:`python_floor` times ``python -c`` importing them
  (or anything else) with the measured install's interpreter, with its RSS:
  what the daemon's start and idle memory cannot go below.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.daemons import Containerd, Moorage, env_without_proxies
from harness.memory import rss_kib

__all__ = [
    "PYTHON_FLOORS",
    "daemon_imports",
    "floor_code",
    "loadavg",
    "python_floor",
    "python_floors",
    "start_twice",
    "time_start",
    "wait_answering",
    "wait_listening",
]

Daemon = Containerd | Moorage

#: ``python -c`` floors by name: the interpreter alone (with ``site`` and without),
#: the HTTP server library the daemon's API has used, and what a daemon that
#: answered ``GET /v1/version`` before starting any plugin would import at the
#: least (its CLI, configuration and listener, asyncio and its own HTTP server):
#: the floor of every design that answers before the plugins have started.
PYTHON_FLOORS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -S -c pass": ["-S", "-c", "pass"],
    "python -c 'import aiohttp.web'": ["-c", "import aiohttp.web"],
    "python -c 'import <an API server alone>'": [
        "-c", "import asyncio, runtime.cli.main, runtime.core.daemon, runtime.pkg.http.web"],
}

#: The environment the daemon imports its libraries in (``runtime.core.daemon``:
#: frozenlist's Python type, aiohttp's TLS contexts without the CA certificates).
DAEMON_IMPORT_ENV = {"FROZENLIST_NO_EXTENSIONS": "1", "SSL_CERT_FILE": "/nonexistent",
                     "SSL_CERT_DIR": "/nonexistent"}


def loadavg() -> float:
    """The one-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cpu(pid: int) -> float:
    """User plus system CPU seconds of a live process (its own, not its children's)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _poll(proc: subprocess.Popen[bytes], timeout: float, what: str,
          probe: Callable[[float], bool]) -> None:
    """Call ``probe(seconds left)`` every 2 ms until it is true; raise if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}")
        left = deadline - time.monotonic()
        if left < 0:
            raise RuntimeError(f"daemon did not {what} in time")
        try:
            if probe(left):
                return
        except OSError:
            pass
        time.sleep(0.002)


def wait_listening(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Block until a unix socket at ``path`` accepts a connection."""
    def connects(left: float) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
        return True

    _poll(proc, timeout, "listen", connects)


#: HTTP/2's client connection preface: any HTTP/2 server (containerd's gRPC) answers
#: it with a SETTINGS frame once it serves the connection.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_VERSION = b"GET /v1/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"


def wait_answering(path: Path, kind: str, proc: subprocess.Popen[bytes],
                   timeout: float = 30) -> None:
    """Block until the daemon (``kind`` ``moorage`` or ``containerd``) at ``path`` answers."""
    request = _H2_PREFACE if kind == "containerd" else _VERSION

    def answers(left: float) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.1, left))
            sock.connect(str(path))
            sock.sendall(request)
            head = sock.recv(64)
        return bool(head) and (kind == "containerd" or head.startswith(b"HTTP/1.1 200"))

    _poll(proc, timeout, "answer", answers)


def _exec(d: Daemon, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Exec ``d``'s command line on its directories (made first), logging to its log."""
    for sub in (d.root, d.state, d.socket.parent):
        sub.mkdir(parents=True, exist_ok=True)
    d.write_config()
    with open(d.log, "ab") as log:
        proc = subprocess.Popen(d.command(), stdout=log, stderr=log, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
    d.proc = proc
    return proc


def time_start(d: Daemon, settle: float = 1.0) -> dict[str, float]:
    """Start ``d`` (not running) and stop it again.

    Returns seconds and the daemon's CPU until its API listens (``wall``,
    ``cpu_to_listen``) and until it answers (``to_answer``,
    ``cpu_to_answer``), its CPU and RSS ``settle`` seconds later
    (``cpu_first_second``, ``rss_kb_1s``), and the load average.
    """
    load = loadavg()
    started = time.perf_counter()
    proc = _exec(d)
    try:
        wait_listening(d.socket, proc)
        wall = time.perf_counter() - started
        cpu_listen = _cpu(proc.pid)
        wait_answering(d.socket, d.name, proc)
        answer = time.perf_counter() - started
        cpu_answer = _cpu(proc.pid)
        time.sleep(settle)
        cpu_settled = _cpu(proc.pid)
        rss = rss_kib(proc.pid)
    finally:
        d.stop()
    return {"wall": wall, "cpu_to_listen": cpu_listen, "to_answer": answer,
            "cpu_to_answer": cpu_answer, "cpu_first_second": cpu_settled, "rss_kb_1s": rss,
            "load": load}


def start_twice(make: Callable[[Path], Daemon], label: str) -> dict[str, dict[str, float]]:
    """:func:`time_start` on an empty root (``fresh``), then again on it (``restart``)."""
    base = Path(tempfile.mkdtemp(prefix=f"mb-start-{label}-", dir="/var/tmp"))
    try:
        return {"fresh": time_start(make(base)), "restart": time_start(make(base))}
    finally:
        make(base).wipe()


def daemon_imports(make: Callable[[Path], Daemon]) -> list[str]:
    """The modules outside ``runtime`` a Moorage daemon has imported once it answers.

    One start under ``PYTHONPROFILEIMPORTTIME`` (every import, nested ones
    included, written to the daemon's stderr), stopped at its first answer.
    """
    base = Path(tempfile.mkdtemp(prefix="mb-imports-", dir="/var/tmp"))
    d = make(base)
    try:
        proc = _exec(d, {"PYTHONPROFILEIMPORTTIME": "1"})
        try:
            wait_answering(d.socket, d.name, proc)
        finally:
            d.stop()
        names = set()
        for line in d.log.read_text(errors="replace").splitlines():
            if line.startswith("import time:") and "imported package" not in line:
                names.add(line.rsplit("|", 1)[1].strip())
        return sorted(n for n in names if n and n.split(".")[0] != "runtime")
    finally:
        d.wipe()


def floor_code(modules: list[str]) -> list[str]:
    """``python`` arguments that import ``modules``, each by its name.

    The list holds what the daemon tried as well as what it loaded (``-X importtime``
    lists an import that raised too: ``sniffio``, ``brotli``, ``_winapi``...): an
    ImportError is passed over here as it was there.
    """
    return ["-c", f"for m in {modules!r}:\n try: __import__(m)\n except ImportError: pass"]


#: Appended to each floor's code: its resident set at the end. (``wait4``'s
#: ``ru_maxrss`` would count the forked harness before the exec.)
_PRINT_RSS = ("\nfor line in open('/proc/self/status'):\n"
              " if line.startswith('VmRSS:'): print(line.split()[1])")


def python_floor(python: str, args: list[str], env: Mapping[str, str] | None = None
                 ) -> dict[str, float]:
    """One ``python ... -c CODE`` from exec to exit: wall, CPU seconds, end VmRSS (KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, *args[:-1], args[-1] + _PRINT_RSS], cwd="/",
                            stdout=subprocess.PIPE, env={**env_without_proxies(), **(env or {})})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{python} {' '.join(args)[:200]} exited {status}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_kib": int(out.split()[-1])}


def python_floors(python: str, imports: list[str], reps: int) -> dict[str, dict[str, Any]]:
    """:data:`PYTHON_FLOORS` and ``python -c`` importing ``imports``, repetitions interleaved.

    Returns, per floor, the medians of ``wall``, ``cpu`` and ``rss_kib`` over
    ``reps`` runs, ``n`` and the load average at the end. The daemon's imports
    run in its import environment (:data:`DAEMON_IMPORT_ENV`).
    """
    floors = {name: (args, None) for name, args in PYTHON_FLOORS.items()}
    floors["python -c 'import <daemon imports>'"] = (floor_code(imports), DAEMON_IMPORT_ENV)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in floors}
    for _ in range(reps):
        for name, (args, env) in floors.items():
            samples[name].append(python_floor(python, args, env))
    return {name: {"n": reps, "load": loadavg(),
                   **{k: statistics.median(x[k] for x in runs) for k in runs[0]}}
            for name, runs in samples.items()}
