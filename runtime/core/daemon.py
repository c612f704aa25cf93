"""``moorage daemon``: lock the state directory, boot the plugin graph, wait for a signal."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from runtime.core import collector, listeners
from runtime.core.errors import FailedPrecondition, MoorageError
from runtime.core.notify import sd_notify

# The configuration (msgspec, tomllib) is imported by run_daemon once the
# collector is paused (runtime.core.collector); anyio, discovery (pluggy) and
# the host once the API's socket listens: with the plugins they are most of
# the start's CPU.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from runtime.core.config import DaemonConfig

__all__ = ["DEFAULT_CONFIG_PATH", "StateLock", "config_path_for", "run_daemon", "serve"]

log = logging.getLogger("moorage.daemon")

#: The configuration read when ``--config`` is not given, if it exists (as
#: containerd reads /etc/containerd/config.toml); otherwise built-in defaults.
DEFAULT_CONFIG_PATH = Path("/etc/moorage/plugins.toml")


def config_path_for(given: str | None) -> str | None:
    """The file ``moorage daemon`` reads: ``given``, else the default path if it exists."""
    if given is not None:
        return given
    return str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.is_file() else None


class StateLock:
    """An exclusive ``flock`` on ``<state>/moorage.lock``: one daemon per state directory."""

    def __init__(self, state: Path) -> None:
        self.path = state / "moorage.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise FailedPrecondition naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FailedPrecondition(
                f"another moorage daemon (pid {holder}) holds {self.path}; "
                "stop it or use a different state directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process dies)."""
        if self._file is not None:
            self._file.close()
            self._file = None


async def serve(config: DaemonConfig) -> None:
    """Run the plugin graph until SIGTERM or SIGINT, then stop it in reverse order."""
    import anyio

    from runtime.core.discovery import discover
    from runtime.core.host import PluginHost, summarize

    discovery = discover()
    host = PluginHost(config, discovery)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with host.running() as plugins:
            collector.resume()
            log.info("daemon started: %s", summarize(plugins.list()))
            # A socket bound early that no server took (server.http disabled) must
            # not keep clients waiting for an answer that never comes.
            listeners.close_untaken()
            # Every plugin is up, the API listening: systemd may start what needs us.
            sd_notify(f"READY=1\nMAINPID={os.getpid()}")
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                sd_notify("STOPPING=1")
                break
    log.info("daemon stopped")


def run_daemon(config_path: str | None) -> int:
    """Entry point of ``moorage daemon``; returns the process exit code."""
    collector.pause()
    try:
        return _run_daemon(config_path)
    finally:
        collector.resume()  # a start that failed: nothing was resumed


def _run_daemon(config_path: str | None) -> int:
    from runtime.core.config import load_config

    try:
        config_path = config_path_for(config_path)
        if config_path is not None:
            log.info("configuration: %s", config_path)
        config = load_config(config_path)
        lock = StateLock(Path(config.state))
        lock.acquire()
    except MoorageError as exc:
        log.error("%s", exc)
        return 1
    try:
        # Clients connecting from now on wait in the backlog until the API
        # server, started last, takes this socket over and answers them.
        listeners.bind_early(Path(config.api.address))
    except (MoorageError, OSError) as exc:
        log.error("cannot listen on %s: %s", config.api.address, exc)
        lock.release()
        return 1
    _watch_children_with_pidfds()
    # The API serves without aiohttp; the registry client imports it at the
    # first pull, and then with the daemon's choices below.
    _shape_aiohttp_when_imported()
    import anyio

    try:
        # asyncio, not trio: the CRI plugin's gRPC server (grpc.aio) runs only on
        # asyncio's loop. Everything else in the daemon stays backend-neutral anyio.
        anyio.run(serve, config, backend="asyncio")
    except MoorageError as exc:
        log.error("daemon failed to start: %s", exc)
        return 1
    except BaseExceptionGroup as group:
        # Startup errors surface wrapped by the task group; report the first one plainly.
        errs = [e for e in _leaves(group) if isinstance(e, MoorageError)]
        if not errs:
            raise
        log.error("daemon failed to start: %s", errs[0])
        return 1
    finally:
        listeners.close_untaken()
        lock.release()
    return 0


def _watch_children_with_pidfds() -> None:
    """Have asyncio wait for subprocesses on pidfds instead of one thread each.

    Python 3.11's default child watcher starts a thread per subprocess to
    block in ``waitpid``; the daemon runs the OCI runtime for every start,
    delete and ``kill --all``, so a burst of containers meant a burst of
    threads. 3.12 picks the pidfd watcher by itself (and deprecates choosing).
    """
    import sys

    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    import asyncio

    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel without pidfds (before 5.3): keep the threads
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def _python_frozenlist() -> None:
    """Have aiohttp use frozenlist's pure-Python ``FrozenList`` (call before importing aiohttp).

    frozenlist's compiled ``FrozenList`` is C++: loading it maps ``libstdc++``,
    about 0.9 MB resident for as long as the daemon runs (1.1 MB with the
    extension itself), for a list type aiohttp uses only for its signals and
    middleware lists. The Python type costs about 1.6 us more per response
    (``on_response_prepare``), against 0.5 ms and more per API request.
    ``FROZENLIST_NO_EXTENSIONS`` is frozenlist's documented switch; it is set
    just for this import, so that the daemon's children do not inherit it, and
    an operator's own value is kept.
    """
    import sys

    if "frozenlist" in sys.modules or "FROZENLIST_NO_EXTENSIONS" in os.environ:
        return
    os.environ["FROZENLIST_NO_EXTENSIONS"] = "1"
    try:
        import frozenlist  # noqa: F401 - imported for its side effect: the choice is made now
    finally:
        del os.environ["FROZENLIST_NO_EXTENSIONS"]


@contextmanager
def _without_default_certificates() -> Iterator[None]:
    """While inside, TLS contexts made with default paths load no CA certificates.

    ``aiohttp.connector`` makes two TLS contexts at import, each loading the
    system's CA certificates (``set_default_verify_paths``): about 60 ms of
    CPU on every daemon start and 2.5 MB resident for as long as it runs. The
    daemon never uses them: the registry client passes its own context
    (``runtime.pkg.registry.auth.verified_tls``, made on the first
    TLS request). OpenSSL reads ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` when the
    paths are loaded, so pointing them nowhere just for that import leaves
    those two contexts empty: a request that still fell back to them would fail
    verification, never skip it. The operator's own values are restored on exit.
    """
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    os.environ["SSL_CERT_FILE"] = os.environ["SSL_CERT_DIR"] = "/nonexistent/moorage-no-certs"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _ShapedLoader:
    """Runs aiohttp's own loader with :func:`_python_frozenlist`'s and the certificates' choice.

    Both must be in place while ``aiohttp/__init__`` runs: it imports frozenlist and
    ``aiohttp.connector`` (which makes the TLS contexts).
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        _python_frozenlist()
        with _without_default_certificates():
            self.loader.exec_module(module)


class _AiohttpFinder:
    """A meta path finder that hands aiohttp's first import to :class:`_ShapedLoader`."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "aiohttp":
            return None
        import sys
        from importlib.machinery import PathFinder

        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ShapedLoader(spec.loader)  # type: ignore[assignment]
        return spec


def _shape_aiohttp_when_imported() -> None:
    """Have aiohttp, whenever the daemon first imports it, skip libstdc++ and the CA files.

    The reasons are :func:`_python_frozenlist`'s and
    :func:`_without_default_certificates`'s; a daemon that never pulls
    never imports aiohttp at all.
    """
    import sys

    if "aiohttp" not in sys.modules and not any(
            isinstance(f, _AiohttpFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AiohttpFinder())  # type: ignore[arg-type]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
