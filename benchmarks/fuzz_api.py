"""Fuzz the admin API from its own OpenAPI document with schemathesis: no 5xx, no hang.

Usage: ``python benchmarks/fuzz_api.py [--max-examples 25] [--seed 1] [--keep]``

Starts a daemon with a TCP listener and a bearer token (its unix socket as usual) and
runs ``schemathesis run http://127.0.0.1:PORT/v1/openapi.json`` with the token, the
``not_a_server_error`` check, a per-request timeout (a hang fails as a timeout) and a
bounded number of examples per operation. Every request and answer is recorded in a HAR
file; the script counts them and lists each 5xx with its request.

Left out on purpose:

* pulls and pushes: they would contact whatever host a random reference names, and a
  test here may only talk to this machine;
* tasks (the runtime plugins are disabled): a random spec run as root could bind-mount
  and write anywhere on the host;
* the event stream, attach and logs: streams that end only when the client goes.

Exit status 0 when no answer was a 5xx and schemathesis reported no failure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.daemon import Daemon  # noqa: E402

#: Plugins whose endpoints are not fuzzed (see the module docstring), and noise.
DISABLED = ["runtime.runc", "runtime.crun", "api.tasks", "network.cni", "api.networks"]
EXCLUDED_PATHS = r"^/v1/(images/(pull|push)|events|tasks/.*|run.*)$"


@dataclass
class FuzzResult:
    """What one fuzzing run saw.

    Attributes:
        requests: Requests sent (from the HAR file).
        statuses: Count of answers per status class (``2xx``, ``4xx``...).
        server_errors: ``METHOD URL -> status`` of every 5xx.
        exit_code: schemathesis' exit status.
        seconds: Wall time of the schemathesis run.
        output: schemathesis' console output (its tail).
    """

    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    exit_code: int = 0
    seconds: float = 0.0
    output: str = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _har(path: Path, result: FuzzResult) -> None:
    if not path.exists():
        return
    doc = json.loads(path.read_text())
    for entry in doc.get("log", {}).get("entries", []):
        result.requests += 1
        status = int(entry.get("response", {}).get("status", 0))
        key = f"{status // 100}xx" if status else "no answer"
        result.statuses[key] = result.statuses.get(key, 0) + 1
        if status >= 500:
            req = entry.get("request", {})
            result.server_errors.append(f"{req.get('method')} {req.get('url')} -> {status}")


def fuzz(workdir: Path, *, max_examples: int = 25, seed: int = 1,
         request_timeout: float = 20.0) -> FuzzResult:
    """Start a daemon under ``workdir``, fuzz it, stop it; return the counts."""
    token = secrets.token_hex(16)
    token_file = workdir / "token"
    token_file.write_text(token + "\n")
    port = _free_port()
    config = (
        f"disabled_plugins = {json.dumps(DISABLED)}\n"
        f'[api]\ntcp_address = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n'
    )
    result = FuzzResult()
    har = workdir / "fuzz.har"
    with Daemon(workdir / "daemon", config) as daemon:
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run",
            f"http://127.0.0.1:{port}/v1/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(max_examples), "--seed", str(seed),
            "--request-timeout", str(request_timeout), "--workers", "1",
            "--exclude-path-regex", EXCLUDED_PATHS,
            "--generation-database", "none", "--no-color",
            "--report", "har", "--report-har-path", str(har),
            "--report-dir", str(workdir / "report"),
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=1800, cwd=workdir)
        result.seconds = time.monotonic() - started
        result.exit_code = done.returncode
        result.output = (done.stdout + done.stderr)[-6000:]
        assert daemon.client().healthz().status == "ok", "the daemon stopped answering"
    _har(har, result)
    return result


def main() -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="moorage-fuzz-"))
    try:
        result = fuzz(workdir, max_examples=args.max_examples, seed=args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(result.output)
    print(f"requests: {result.requests} in {result.seconds:.0f}s; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses.items())))
    for line in result.server_errors:
        print(f"5xx: {line}")
    return 0 if not result.server_errors and result.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
