"""What an idle daemon keeps out of memory (issue 10: daemon idle RSS).

Every plugin starts at daemon start, but what only a request needs is imported
by the first such request: the Prometheus exposition, the layer appliers
(``tarfile``, ISA-L, zstd), the registry client (and with it aiohttp: the API
is served by :mod:`runtime.pkg.http`) and the unpacker. When aiohttp comes,
it gets frozenlist's Python ``FrozenList``, so ``libstdc++`` is not mapped.
``PYTHONVERBOSE`` makes the daemon log each module it imports, however imported.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import Daemon

#: Imported only by a request (a scrape, a pull, an unpack).
REQUEST_ONLY = (
    "prometheus_client",
    "tarfile",
    "isal",
    "zstandard",
    "runtime.plugins.metrics.figures",
    "runtime.plugins.diff.walking.apply",
    "runtime.plugins.diff.walking.staging",
    "runtime.pkg.registry.client",
    "runtime.plugins.images.unpack",
    "runtime.plugins.images.fetch",
    "aiohttp",
    "yarl",
    "multidict",
    "frozenlist",
    # Parses a registry's HTTP-date Retry-After, and only that (runtime.pkg.registry.retry).
    "email.utils",
)


#: Imported by nothing the daemon does: ``moorage daemon`` is parsed without argparse.
NEVER = ("argparse",)


@functools.cache
def _interpreter_start() -> frozenset[str]:
    """What the interpreter imports before any of the daemon's code runs.

    ``site`` runs the environment's ``.pth`` files, and some hosts ship one that
    imports a library (certifi, and with it ``tempfile``) in every interpreter:
    not the daemon's doing, so not what these tests hold it to.
    """
    listed = subprocess.run([sys.executable, "-c", "import sys; print(*sys.modules)"],
                            check=True, capture_output=True, text=True).stdout
    return frozenset(listed.split())


def imported(log: str) -> set[str]:
    """The modules the daemon's log says it imported, less the interpreter's own start."""
    found = set(re.findall(r"^import '([\w.]+)' #", log, flags=re.MULTILINE))
    return found - _interpreter_start()


def test_idle_daemon_leaves_request_only_modules_unimported(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, env={"PYTHONVERBOSE": "1"}).start()
    try:
        daemon.client().healthz()
        at_idle = imported(daemon.log())
        assert "runtime.plugins.metrics.plugin" in at_idle  # the log does list imports
        assert sorted(m for m in REQUEST_ONLY if m in at_idle) == []
        assert sorted(m for m in NEVER if m in at_idle) == []
        assert daemon.proc is not None
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert "libstdc++" not in maps
        assert "_frozenlist" not in maps
        # A scrape brings the exposition in, and answers as before.
        response = daemon.client().open("GET", "/v1/metrics")
        assert response.status == 200
        assert b"moorage_api_requests_total{" in response.read()
        assert "prometheus_client" in imported(daemon.log())
    finally:
        daemon.close()


def test_daemon_children_do_not_inherit_the_frozenlist_switch(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path).start()
    try:
        assert daemon.proc is not None
        environ = Path(f"/proc/{daemon.proc.pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"FROZENLIST_NO_EXTENSIONS=")]
    finally:
        daemon.close()
    assert "FROZENLIST_NO_EXTENSIONS" not in os.environ


#: Imported by the first use that needs them, not by any plugin's registration or
#: init on a root used before (issue 20: daemon start). ``ctypes``: a network
#: namespace made, a mount, the overlay probe; ``tempfile``: an upload, a copy, a
#: diff; ``secrets``, ``shlex``: no plugin needs them (``os.urandom``), or only to
#: remove a DEL's leftover iptables rules; a user's lookup in the image: the first bundle.
FIRST_USE_ONLY = (
    "ctypes",
    "tempfile",
    "secrets",
    "shlex",
    "runtime.plugins.images.platforms",
    "runtime.plugins.images.progress",
    "runtime.plugins.network.cni.leftover_rules",
    "runtime.plugins.runtime.runc.user",
    # The websocket protocol: the first attach, exec or `run` that opens one.
    "runtime.pkg.http.websocket",
    # Removing a tree (an ingest, a snapshot, a bundle, a volume; the images' staging
    # left by a daemon that died) and finding a program on PATH (runtime.pkg.which):
    # shutil imports its compressors when it is imported.
    "shutil",
    "bz2",
    "lzma",
    # Digests of an ingest's ref or data, a network's bridge name; the API's token check.
    "hashlib",
    "hmac",
)


def test_plugins_start_on_a_used_root_without_first_use_modules(tmp_path: Path) -> None:
    """The second start (the overlay probe remembered) imports none of them; a pull would."""
    daemon = Daemon(tmp_path, env={"PYTHONVERBOSE": "1"})
    try:
        daemon.start()
        daemon.client().healthz()
        daemon.stop()
        first_start = len(daemon.log())
        daemon.start()
        daemon.client().healthz()
        at_idle = imported(daemon.log()[first_start:])
        assert "runtime.plugins.images.routes" in at_idle  # this start's imports are listed
        assert sorted(m for m in FIRST_USE_ONLY if m in at_idle) == []
    finally:
        daemon.close()
