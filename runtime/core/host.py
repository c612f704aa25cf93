"""The plugin host: validate configs, start plugins in graph order, stop them in reverse."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from runtime.core.config import ConfigError, DaemonConfig, decode_plugin_config
from runtime.core.discovery import Discovery, PluginSource
from runtime.core.errors import FailedPrecondition
from runtime.core.graph import dependencies, order, providers
from runtime.core.proxy import with_proxies
from runtime.core.registration import (
    PLUGIN_API_VERSION,
    SUPPORTED_API_VERSIONS,
    InitContext,
    PluginSkipped,
    Registration,
)

__all__ = [
    "PluginHost",
    "PluginRecord",
    "PluginSet",
    "PluginStatus",
    "StartupError",
    "validate_plugin_configs",
]

log = logging.getLogger("moorage.host")


class StartupError(FailedPrecondition):
    """The daemon cannot start: a required plugin failed, or the graph is invalid."""


class PluginStatus(StrEnum):
    """Where a plugin stands."""

    PENDING = "pending"  # not started yet
    OK = "ok"  # running
    SKIP = "skip"  # does not apply here, or a requirement is not running
    ERROR = "error"  # failed to load or to start
    DISABLED = "disabled"  # removed by disabled_plugins
    STOPPED = "stopped"  # closed at shutdown


class PluginRecord(msgspec.Struct, kw_only=True):
    """One plugin as ``GET /v1/plugins`` and ``moorage plugins ls`` show it."""

    type: str
    id: str
    requires: list[str] = []
    status: PluginStatus = PluginStatus.PENDING
    reason: str = ""
    distribution: str = ""
    version: str = ""
    api_version: int = PLUGIN_API_VERSION
    description: str = ""
    init_seconds: float = 0.0


class PluginSet:
    """The daemon's plugins in start order, with their records and running services."""

    def __init__(self) -> None:
        self.records: dict[str, PluginRecord] = {}
        self.services: dict[str, Any] = {}

    def list(self) -> list[PluginRecord]:
        """All records, in start order (load failures last)."""
        return list(self.records.values())

    def get(self, name: str) -> Any:
        """The running service of ``type.id``; KeyError when it is not running."""
        return self.services[name]

    def by_type(self, type_: str) -> dict[str, Any]:
        """Running services of one type, keyed by id."""
        prefix = type_ + "."
        return {n[len(prefix) :]: s for n, s in self.services.items() if n.startswith(prefix)}


def validate_plugin_configs(config: DaemonConfig, discovery: Discovery) -> dict[str, Any]:
    """Decode every plugin's section; unknown sections are errors.

    Returns:
        The decoded config Struct of every registration, keyed by full name.

    Raises:
        ConfigError: naming file, section and key.
    """
    decoded: dict[str, Any] = {}
    names = {reg.name for reg, _ in discovery.registrations}
    for reg, _ in discovery.registrations:
        if reg.config is not None:
            decoded[reg.name] = decode_plugin_config(config, reg.name, reg.config)
        elif config.plugins.get(reg.name):
            raise ConfigError(
                f'{config.source}: [plugins."{reg.name}"] this plugin takes no configuration'
            )
    unknown = sorted(set(config.plugins) - names)
    # A section for a plugin whose package failed to load is not the operator's
    # mistake: the load failure is reported as that plugin's error instead.
    if unknown and not discovery.failures:
        raise ConfigError(
            f'{config.source}: [plugins."{unknown[0]}"] no such plugin; '
            f"known plugins: {', '.join(sorted(names))}"
        )
    for key in ("disabled_plugins", "required_plugins"):
        for name in getattr(config, key):
            if name not in names and not discovery.failures:
                raise ConfigError(f"{config.source}: [top level] key '{key}': no plugin {name!r}")
    return decoded


class PluginHost:
    """Starts a discovered plugin set inside one task group and stops it in reverse.

    Use as ``async with PluginHost(config, discovery) as plugins: ...``.
    """

    def __init__(self, config: DaemonConfig, discovery: Discovery) -> None:
        self.config = config
        # Proxy plugins join here so that every path that starts plugins gets them.
        self.discovery = with_proxies(discovery, config)
        self.plugins = PluginSet()
        self._scopes: dict[str, list[anyio.CancelScope]] = {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[PluginSet]:
        """Start every plugin; on exit close them in reverse start order."""
        configs = validate_plugin_configs(self.config, self.discovery)
        ordered, sources = self._prepare()
        # Raised after the task group has closed, so callers see the StartupError
        # (or their own body's error) itself, not wrapped in an ExceptionGroup.
        failure: Exception | None = None
        async with anyio.create_task_group() as tg, AsyncExitStack() as stack:
            # The exit stack is entered after the task group, so it unwinds
            # (closing plugins) before the task group cancels their tasks.
            try:
                try:
                    await self._start_all(ordered, sources, configs, tg, stack)
                    self._check_required()
                except Exception as exc:
                    failure = exc
                else:
                    try:
                        yield self.plugins
                    except Exception as exc:
                        failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _start_all(
        self,
        ordered: list[Registration],
        sources: dict[str, PluginSource],
        configs: dict[str, Any],
        tg: TaskGroup,
        stack: AsyncExitStack,
    ) -> None:
        """Start every plugin as soon as what it requires has started.

        Plugins whose requirements are met start side by side: a plugin's init
        that waits on a thread or the disk (the overlayfs probe, SQLite's
        migrations) no longer holds up the unrelated ones queued behind it in
        ``ordered``. What stays as it was: each plugin starts only after every
        plugin it depends on has finished starting (and sees their services),
        stop runs in the reverse of the start order (the order in which the
        starts finished, as the boot log shows it), inits begin in ``ordered``
        order, and a required plugin's failure raises the same StartupError.
        After a failure nothing more is started; starts already under way
        finish, so that they can be closed.
        """
        finished = {reg.name: anyio.Event() for reg in ordered}
        failures: dict[int, Exception] = {}
        position = {reg.name: i for i, reg in enumerate(ordered)}
        started: list[Registration] = []  # in the order their starts finished
        progress = anyio.Event()  # set (and replaced) whenever a start ends

        async def start(reg: Registration, entered: anyio.Event) -> None:
            nonlocal progress
            # Runs until the init first blocks (or ends) before the loop below
            # resumes: inits begin in ``ordered`` order on every backend.
            entered.set()
            try:
                await self._start_one(reg, sources[reg.name], configs, tg)
                started.append(reg)
                # Services stay listed in start order (``by_type`` callers, such as
                # the API server collecting route sets, see a stable order).
                services = self.plugins.services
                ranked = sorted(services.items(), key=lambda item: position.get(item[0], -1))
                services.clear()
                services.update(ranked)
            except Exception as exc:
                failures[position[reg.name]] = exc
            finally:
                finished[reg.name].set()
                progress.set()
                progress = anyio.Event()

        pending = list(ordered)
        deps = {reg.name: dependencies(reg, ordered) for reg in ordered}
        try:
            async with anyio.create_task_group() as starting:
                # After a failure nothing more starts; starts under way finish.
                while pending and not failures:
                    waiting = progress
                    ready = next((r for r in pending
                                  if all(finished[d.name].is_set() for d in deps[r.name])), None)
                    if ready is None:
                        await waiting.wait()
                        continue
                    pending.remove(ready)
                    entered = anyio.Event()
                    starting.start_soon(start, ready, entered, name=f"start {ready.name}")
                    await entered.wait()
        finally:
            # Closed in the reverse of the order their starts finished (the order of
            # the boot log): a plugin finishes starting only after what it requires,
            # so it is closed before any of them.
            for reg in started:
                if reg.name in self.plugins.services:
                    stack.push_async_callback(self._stop_one, reg, self.plugins.services[reg.name])
        if failures:
            # The failure a sequential start would have met first.
            raise failures[min(failures)]

    def plan(self) -> list[PluginRecord]:
        """Check the configuration and order the graph without starting anything.

        Used by ``moorage config check``.

        Returns:
            Every record in start order; plugins that cannot start (load
            failures, duplicates, unprovided requirements) are in status error.

        Raises:
            ConfigError: a plugin section is invalid.
            StartupError: a required plugin cannot start, or the graph has a cycle.
        """
        validate_plugin_configs(self.config, self.discovery)
        self._prepare()
        return self.plugins.list()

    def _prepare(self) -> tuple[list[Registration], dict[str, PluginSource]]:
        disabled = set(self.config.disabled_plugins)
        regs = [r for r, _ in self.discovery.registrations]
        sources = {r.name: s for r, s in self.discovery.registrations}
        counts: dict[str, list[PluginSource]] = {}
        for reg, source in self.discovery.registrations:
            counts.setdefault(reg.name, []).append(source)
        duplicates = {n: s for n, s in counts.items() if len(s) > 1}

        enabled = [r for r in regs if r.name not in disabled and r.name not in duplicates]
        for reg in regs:
            record = PluginRecord(
                type=reg.type,
                id=reg.id,
                requires=list(reg.requires),
                api_version=reg.api_version,
                description=reg.description,
                distribution=sources[reg.name].distribution,
                version=sources[reg.name].version,
            )
            if reg.name in duplicates:
                record.status = PluginStatus.ERROR
                record.reason = (
                    f"{reg.name} is provided by more than one distribution: "
                    + ", ".join(f"{s.distribution} {s.version}" for s in duplicates[reg.name])
                )
            elif reg.name in disabled:
                record.status = PluginStatus.DISABLED
                record.reason = "listed in disabled_plugins"
            self.plugins.records[reg.name] = record
        # A requirement that nothing provides fails that plugin alone (its
        # dependants skip): one package missing must not stop the daemon.
        for reg in list(enabled):
            absent = [
                r for r in reg.requires if not [p for p in providers(r, regs) if p is not reg]
            ]
            if absent:
                record = self.plugins.records[reg.name]
                record.status = PluginStatus.ERROR
                record.reason = f"requires {', '.join(absent)}, which no plugin provides"
                enabled.remove(reg)
                log.warning(
                    "plugin %s error: %s", reg.name, record.reason, extra={"plugin": reg.name}
                )
        for failure in self.discovery.failures:
            # Keyed with the distribution: two packages may name their entry points alike.
            key = f"entrypoint.{failure.source.entry_point}@{failure.source.distribution}"
            self.plugins.records[key] = PluginRecord(
                type="entrypoint",
                id=failure.source.entry_point,
                status=PluginStatus.ERROR,
                reason=failure.error,
                distribution=failure.source.distribution,
                version=failure.source.version,
            )
        for name in self.config.required_plugins:
            rec = self.plugins.records.get(name)
            if rec is None or rec.status in (PluginStatus.DISABLED, PluginStatus.ERROR):
                why = "not found" if rec is None else f"{rec.status}: {rec.reason}"
                raise StartupError(f"required plugin {name} cannot start ({why})")
        try:
            ordered = order(enabled, disabled=[r for r in regs if r not in enabled])
        except FailedPrecondition as exc:
            raise StartupError(str(exc)) from exc
        # Records follow start order so listings read top-down like the boot log.
        records = self.plugins.records
        self.plugins.records = {r.name: records[r.name] for r in ordered}
        self.plugins.records.update(
            {k: v for k, v in records.items() if k not in self.plugins.records}
        )
        return ordered, sources

    def _unmet(self, reg: Registration) -> str | None:
        """Why ``reg`` cannot start because of a requirement, or None."""
        records = self.plugins.records
        for req in reg.requires:
            found = [p for p in providers(req, [*self._all_regs()]) if p is not reg]
            running = [p for p in found if records[p.name].status == PluginStatus.OK]
            if "." in req and not running:
                rec = records[req]
                return f"requires {req}, which is {rec.status}: {rec.reason}".rstrip(": ")
            if "." not in req and not running:
                states = ", ".join(f"{p.name} {records[p.name].status}" for p in found)
                return f"requires a running {req} plugin; none is running ({states})"
        return None

    def _all_regs(self) -> list[Registration]:
        return [r for r, _ in self.discovery.registrations]

    async def _start_one(
        self,
        reg: Registration,
        source: PluginSource,
        configs: dict[str, Any],
        tg: TaskGroup,
    ) -> None:
        record = self.plugins.records[reg.name]
        if reg.api_version not in SUPPORTED_API_VERSIONS:
            record.status = PluginStatus.ERROR
            record.reason = (
                f"built for plugin API version {reg.api_version}, but this Moorage serves "
                f"version(s) {', '.join(map(str, sorted(SUPPORTED_API_VERSIONS)))}"
            )
        elif (why := self._unmet(reg)) is not None:
            record.status = PluginStatus.SKIP
            record.reason = why
        else:
            await self._init(reg, configs.get(reg.name), tg)
        level = {PluginStatus.OK: logging.INFO, PluginStatus.SKIP: logging.INFO}.get(
            record.status, logging.WARNING
        )
        log.log(
            level,
            "plugin %s %s%s",
            reg.name,
            record.status,
            f": {record.reason}" if record.reason else "",
            extra={"plugin": reg.name, "distribution": source.distribution},
        )
        if record.status != PluginStatus.OK and reg.name in self.config.required_plugins:
            raise StartupError(f"required plugin {reg.name} {record.status}: {record.reason}")

    async def _init(self, reg: Registration, config: Any, tg: TaskGroup) -> None:
        record = self.plugins.records[reg.name]
        root = Path(self.config.root) / reg.name
        state = Path(self.config.state) / reg.name
        required: dict[str, Any] = {}
        for req in reg.requires:
            for p in providers(req, self._all_regs()):
                if p.name in self.plugins.services:
                    required[p.name] = self.plugins.services[p.name]
        exchange = next(iter(self.plugins.by_type("events").values()), None)
        ctx: InitContext[Any] = InitContext(
            registration=reg,
            config=config,
            root=root,
            state=state,
            daemon=self.config,
            plugins=self.plugins,
            events=exchange,
            _required=required,
            _spawn=lambda fn, *args, name: self._spawn(tg, reg.name, fn, *args, name=name),
        )
        started = time.monotonic()
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
            service = await reg.init(ctx)
        except PluginSkipped as exc:
            record.status, record.reason = PluginStatus.SKIP, exc.reason
            self._cancel_tasks(reg.name)
            return
        except Exception as exc:
            log.debug("plugin %s init failed", reg.name, exc_info=True)
            record.status = PluginStatus.ERROR
            record.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._cancel_tasks(reg.name)
            return
        finally:
            record.init_seconds = round(time.monotonic() - started, 6)
        record.status = PluginStatus.OK
        self.plugins.services[reg.name] = service

    async def _stop_one(self, reg: Registration, service: Any) -> None:
        record = self.plugins.records[reg.name]
        try:
            if reg.close is not None:
                with anyio.fail_after(self.config.api.shutdown_timeout):
                    await reg.close(service)
        except Exception:
            log.exception("plugin %s failed to close", reg.name)
        finally:
            self._cancel_tasks(reg.name)
            self.plugins.services.pop(reg.name, None)
            record.status = PluginStatus.STOPPED
            log.info("plugin %s stopped", reg.name, extra={"plugin": reg.name})

    def _cancel_tasks(self, name: str) -> None:
        for scope in self._scopes.pop(name, []):
            scope.cancel()

    async def _spawn(
        self,
        tg: TaskGroup,
        plugin: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str,
    ) -> Any:
        scope = anyio.CancelScope()
        self._scopes.setdefault(plugin, []).append(scope)

        async def run(*, task_status: TaskStatus[Any]) -> None:
            with scope:
                try:
                    await fn(*args, task_status=task_status)
                except Exception:
                    # A background task's failure is the plugin's, not the daemon's.
                    log.exception("background task %s of plugin %s failed", name, plugin)

        return await tg.start(run, name=name)

    def _check_required(self) -> None:
        for name in self.config.required_plugins:
            rec = self.plugins.records.get(name)
            if rec is None or rec.status != PluginStatus.OK:
                raise StartupError(f"required plugin {name} is not running")


def summarize(records: Sequence[PluginRecord]) -> str:
    """One line per status count, for the boot log."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
