"""``runtime.core.proxy``: ``[proxy_plugins.<name>]`` sections become plugins served elsewhere.

Config handling is tested directly; starting proxies goes through a
:class:`PluginHost` (asyncio only: the proxy client is aiohttp's) and, for
the promises that matter to operators, through a real daemon: a stalled proxy
fails its own calls with ``unavailable`` and the daemon keeps answering.
"""

from __future__ import annotations

import json
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from aiohttp import web

from runtime.core.config import ConfigError, DaemonConfig, parse_config
from runtime.core.discovery import Discovery, PluginSource
from runtime.core.errors import NotFound, Unavailable
from runtime.core.host import PluginHost, PluginStatus
from runtime.core.proxy import (
    PROXY_DISTRIBUTION,
    proxy_registrations,
    socket_path,
    with_proxies,
)
from runtime.plugins.events.plugin import moorage_plugins as events_plugins
from runtime.plugins.snapshots.proxy.client import ProxySnapshotter
from tests.fixtures.daemon import Daemon, assert_error


@pytest.fixture
def anyio_backend() -> str:
    """The proxy client is aiohttp's: asyncio only, like the daemon."""
    return "asyncio"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for sockets whose paths fit the 107-byte limit."""
    path = Path(tempfile.mkdtemp(prefix="mpr"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def config(tmp_path: Path, text: str) -> DaemonConfig:
    head = f'root = "{tmp_path / "root"}"\nstate = "{tmp_path / "state"}"\n'
    return parse_config(head + text, "plugins.toml")


def proxy_section(
    name: str, address: str, *, type_: str = "snapshotter", timeout: float = 10
) -> str:
    return f'[proxy_plugins.{name}]\ntype = "{type_}"\naddress = "{address}"\ntimeout = {timeout}\n'


# -- configuration ---------------------------------------------------------------


def test_socket_path_accepts_unix_urls_and_absolute_paths() -> None:
    assert socket_path("unix:///run/p.sock") == "/run/p.sock"
    assert socket_path("/run/p.sock") == "/run/p.sock"
    assert socket_path("tcp://127.0.0.1:80") is None
    assert socket_path("unix://relative.sock") is None


def test_each_section_becomes_a_registration_from_distribution_proxy(tmp_path: Path) -> None:
    """In file order, id = section name, no config, no requirements."""
    cfg = config(
        tmp_path,
        proxy_section("zeta", "unix:///run/z.sock") + proxy_section("alpha", "/run/a.sock"),
    )
    found = proxy_registrations(cfg)
    assert [(r.name, r.requires, r.config) for r, _ in found] == [
        ("snapshotter.zeta", (), None),
        ("snapshotter.alpha", (), None),
    ]
    assert [s for _, s in found] == [
        PluginSource(PROXY_DISTRIBUTION, "", "zeta", "unix:///run/z.sock"),
        PluginSource(PROXY_DISTRIBUTION, "", "alpha", "/run/a.sock"),
    ]
    assert found[0][0].description == "snapshotter served by proxy at unix:///run/z.sock"


def test_with_proxies_appends_after_the_installed_plugins(tmp_path: Path) -> None:
    installed = Discovery(
        [(r, PluginSource("moorage", "1", "events", "x")) for r in events_plugins()]
    )
    assert with_proxies(installed, config(tmp_path, "")) is installed
    merged = with_proxies(installed, config(tmp_path, proxy_section("p", "/run/p.sock")))
    assert [r.name for r, _ in merged.registrations] == ["events.exchange", "snapshotter.p"]
    assert [r.name for r, _ in installed.registrations] == ["events.exchange"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            proxy_section("c", "/run/c.sock", type_="content"),
            "plugins.toml: [proxy_plugins.c] key 'type': no proxy client for type 'content'; "
            "supported: snapshotter",
        ),
        (
            proxy_section("t", "tcp://127.0.0.1:1"),
            "plugins.toml: [proxy_plugins.t] key 'address': 'tcp://127.0.0.1:1' is not a unix "
            "socket address (unix:///path/to.sock)",
        ),
        (
            proxy_section("z", "/run/z.sock", timeout=0),
            "plugins.toml: [proxy_plugins.z] key 'timeout': must be a positive number of seconds",
        ),
        (
            proxy_section("Bad", "/run/b.sock"),
            "plugins.toml: [proxy_plugins.Bad] plugin id 'Bad' must match "
            "^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$",
        ),
    ],
)
def test_invalid_section_is_a_config_error_naming_file_section_and_key(
    tmp_path: Path, section: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        proxy_registrations(config(tmp_path, section))
    assert str(caught.value) == message


# -- starting proxies in a plugin host ---------------------------------------------


def host_with(tmp_path: Path, text: str) -> PluginHost:
    installed = Discovery(
        [(r, PluginSource("moorage", "1", "events", "x")) for r in events_plugins()]
    )
    return PluginHost(config(tmp_path, text), installed)


async def test_unreachable_proxy_is_an_error_and_the_rest_runs(
    tmp_path: Path, short_dir: Path
) -> None:
    missing = short_dir / "missing.sock"
    host = host_with(tmp_path, proxy_section("gone", f"unix://{missing}"))
    async with host.running() as plugins:
        record = plugins.records["snapshotter.gone"]
        assert (record.status, record.distribution, record.version) == (
            PluginStatus.ERROR,
            "proxy",
            "",
        )
        assert record.reason == (
            f"Unavailable: proxy gone at unix://{missing} is unreachable: No such file or directory"
        )
        assert plugins.records["events.exchange"].status == PluginStatus.OK


async def test_reachable_proxy_runs_and_maps_errors(tmp_path: Path, short_dir: Path) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"protocol": 1, "types": ["snapshotter"]})

    async def stat(request: web.Request) -> web.Response:
        key = (await request.json())["key"]
        error = {"code": "not_found", "message": f"no {key}"}
        return web.json_response({"error": error}, status=404)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/snapshotter/stat", stat)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = short_dir / "ok.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        host = host_with(tmp_path, proxy_section("remote", str(sock)))
        async with host.running() as plugins:
            assert plugins.records["snapshotter.remote"].status == PluginStatus.OK
            service = plugins.get("snapshotter.remote")
            assert isinstance(service, ProxySnapshotter)
            with pytest.raises(NotFound, match=r"^no layer$"):
                await service.stat("layer")
        with pytest.raises(Unavailable, match="client is closed"):
            await service.stat("layer")  # closed at shutdown
    finally:
        await runner.cleanup()


# -- through a real daemon -----------------------------------------------------------


class _StalledHandler(BaseHTTPRequestHandler):
    """Answers the health probe, then never answers a snapshotter call."""

    server: StalledProxy

    def do_GET(self) -> None:
        body = json.dumps({"protocol": 1, "types": ["snapshotter"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.calls.append(self.path)
        self.server.release.wait(30)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a unix peer has no address to log, and tests need no access log


class StalledProxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A proxy in its own threads (not the daemon's process) that stalls every call."""

    # Handler threads are joined by server_close(), once released: no thread
    # outlives the test (others count threads).
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), _StalledHandler)
        self.calls: list[str] = []
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join()


def test_daemon_stalled_proxy_fails_its_calls_and_the_daemon_keeps_answering(
    tmp_path: Path, short_dir: Path
) -> None:
    """Prepare on a proxy that never answers is a 503 after the timeout; healthz stays fast."""
    proxy = StalledProxy(short_dir / "stall.sock")
    extra = proxy_section("stalled", f"unix://{short_dir / 'stall.sock'}", timeout=1.5)
    try:
        with Daemon(tmp_path / "d", extra) as daemon:
            [record] = [p for p in daemon.client().plugins() if p.id == "stalled"]
            assert (record.type, record.status, record.distribution) == (
                "snapshotter",
                "ok",
                "proxy",
            )
            with ThreadPoolExecutor(1) as pool:
                started = time.monotonic()
                call = pool.submit(daemon.client().prepare_snapshot, "stalled", "k")
                slowest = 0.0
                while not call.done():
                    before = time.monotonic()
                    assert daemon.client().healthz().status == "ok"
                    slowest = max(slowest, time.monotonic() - before)
                    time.sleep(0.05)
                with pytest.raises(Unavailable) as caught:
                    call.result()
            elapsed = time.monotonic() - started
            assert assert_error(caught.value, "unavailable") == (
                "proxy stalled did not answer within 1.5s"
            )
            assert 1.5 <= elapsed < 5.0
            assert slowest < 0.5
            # Other plugins (GC) may call the proxy too; the client sent one prepare.
            assert proxy.calls.count("/snapshotter/prepare") == 1, proxy.calls
    finally:
        proxy.close()


def test_daemon_with_unreachable_proxy_starts_and_lists_the_error(
    tmp_path: Path, short_dir: Path
) -> None:
    missing = short_dir / "nobody.sock"
    with Daemon(tmp_path / "d", proxy_section("nobody", f"unix://{missing}")) as daemon:
        plugins = {f"{p.type}.{p.id}": p for p in daemon.client().plugins()}
        record = plugins["snapshotter.nobody"]
        assert (record.status, record.distribution) == ("error", "proxy")
        assert record.reason.endswith("is unreachable: No such file or directory")
        assert plugins["snapshotter.native"].status == "ok"
        assert plugins["service.snapshots"].status == "ok"
        assert daemon.client().healthz().status == "ok"
