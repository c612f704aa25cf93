"""``runtime.core.host``: start plugins in graph order, stop them in reverse, report each one.

Discovery results are built directly from registrations, so no package is installed.
Every test runs on both anyio backends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import TaskStatus

from runtime.core.config import ConfigError, DaemonConfig, parse_config
from runtime.core.discovery import Discovery, PluginSource
from runtime.core.events import Exchange
from runtime.core.host import PluginHost, PluginSet, PluginStatus, StartupError
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration
from runtime.plugins.events.plugin import moorage_plugins as events_plugins

SOURCE = PluginSource("test-dist", "1.0", "test", "tests.plugins")

Init = Callable[[InitContext[Any]], Awaitable[Any]]


class Recorder:
    """Registrations whose init and close append to one shared log."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def reg(
        self,
        name: str,
        *requires: str,
        init: Init | None = None,
        config: type[PluginConfig] | None = None,
    ) -> Registration:
        async def default_init(ctx: InitContext[Any]) -> str:
            return f"service of {name}"

        async def recorded_init(ctx: InitContext[Any]) -> Any:
            self.log.append(f"init {name}")
            return await (init or default_init)(ctx)

        async def close(service: Any) -> None:
            self.log.append(f"close {name}")

        type_, _, id_ = name.partition(".")
        return Registration(
            type=type_, id=id_, requires=requires, init=recorded_init, close=close, config=config
        )


def discovery(*regs: Registration) -> Discovery:
    return Discovery([(r, SOURCE) for r in regs])


def daemon_config(tmp_path: Path, text: str = "") -> DaemonConfig:
    head = f'root = "{tmp_path / "root"}"\nstate = "{tmp_path / "state"}"\n'
    return parse_config(head + text, "plugins.toml")


def host(tmp_path: Path, *regs: Registration, config: str = "") -> PluginHost:
    return PluginHost(daemon_config(tmp_path, config), discovery(*regs))


def statuses(plugins: PluginSet) -> dict[str, tuple[str, str]]:
    return {name: (rec.status.value, rec.reason) for name, rec in plugins.records.items()}


async def fail(ctx: InitContext[Any]) -> None:
    raise RuntimeError("disk on fire")


# -- order ----------------------------------------------------------------------------


async def test_host_starts_in_graph_order_and_stops_in_reverse(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [
        rec.reg("server.http", "api"),
        rec.reg("api.namespaces", "metadata.sqlite"),
        rec.reg("metadata.sqlite"),
        rec.reg("api.system"),
    ]
    async with host(tmp_path, *regs).running() as plugins:
        assert rec.log == [
            "init metadata.sqlite",
            "init api.namespaces",
            "init api.system",
            "init server.http",
        ]
        assert list(plugins.records) == [
            "metadata.sqlite",
            "api.namespaces",
            "api.system",
            "server.http",
        ]
        assert {rec.status for rec in plugins.list()} == {PluginStatus.OK}
        rec.log.clear()
    assert rec.log == [
        "close server.http",
        "close api.system",
        "close api.namespaces",
        "close metadata.sqlite",
    ]
    assert {r.status for r in plugins.list()} == {PluginStatus.STOPPED}
    assert plugins.services == {}


async def test_host_records_carry_origin_and_description(tmp_path: Path) -> None:
    async def init(ctx: InitContext[Any]) -> None:
        return None

    reg = Registration(type="a", id="one", init=init, requires=(), description="the one")
    async with host(tmp_path, reg).running() as plugins:
        record = plugins.records["a.one"]
        assert (record.distribution, record.version, record.description) == (
            "test-dist",
            "1.0",
            "the one",
        )
        assert record.init_seconds >= 0


async def test_host_only_started_plugins_are_closed(tmp_path: Path) -> None:
    rec = Recorder()

    async def skip(ctx: InitContext[Any]) -> None:
        raise PluginSkipped("not here")

    async with host(
        tmp_path, rec.reg("a.one"), rec.reg("b.two", init=skip), rec.reg("c.three", init=fail)
    ).running():
        rec.log.clear()
    assert rec.log == ["close a.one"]


# -- skip and error ----------------------------------------------------------------


async def test_host_skip_gives_status_skip_with_reason(tmp_path: Path) -> None:
    rec = Recorder()

    async def skip(ctx: InitContext[Any]) -> None:
        raise PluginSkipped("root is not on btrfs")

    async with host(tmp_path, rec.reg("snapshotter.btrfs", init=skip)).running() as plugins:
        assert statuses(plugins) == {"snapshotter.btrfs": ("skip", "root is not on btrfs")}
        assert "snapshotter.btrfs" not in plugins.services


async def test_host_init_error_gives_status_error_and_dependants_skip(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [
        rec.reg("metadata.sqlite", init=fail),
        rec.reg("api.namespaces", "metadata.sqlite"),
        rec.reg("gc.scheduler", "metadata"),
        rec.reg("server.http", "api.namespaces"),
        rec.reg("api.system"),
    ]
    async with host(tmp_path, *regs).running() as plugins:
        assert statuses(plugins) == {
            "metadata.sqlite": ("error", "RuntimeError: disk on fire"),
            "api.namespaces": (
                "skip",
                "requires metadata.sqlite, which is error: RuntimeError: disk on fire",
            ),
            "gc.scheduler": (
                "skip",
                "requires a running metadata plugin; none is running (metadata.sqlite error)",
            ),
            "server.http": (
                "skip",
                "requires api.namespaces, which is skip: requires "
                "metadata.sqlite, which is error: RuntimeError: disk on fire",
            ),
            "api.system": ("ok", ""),
        }
    assert "init api.namespaces" not in rec.log


async def test_host_error_without_message_names_the_exception(tmp_path: Path) -> None:
    rec = Recorder()

    async def bare(ctx: InitContext[Any]) -> None:
        raise KeyError

    async with host(tmp_path, rec.reg("a.one", init=bare)).running() as plugins:
        assert statuses(plugins) == {"a.one": ("error", "KeyError")}


async def test_host_type_requirement_needs_only_one_running_provider(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [
        rec.reg("snapshotter.btrfs", init=fail),
        rec.reg("snapshotter.native"),
        rec.reg("service.snapshots", "snapshotter"),
    ]
    seen: dict[str, Any] = {}

    async def init(ctx: InitContext[Any]) -> None:
        seen.update(ctx.get_by_type("snapshotter"))

    regs[2] = rec.reg("service.snapshots", "snapshotter", init=init)
    async with host(tmp_path, *regs).running() as plugins:
        assert plugins.records["service.snapshots"].status == PluginStatus.OK
    assert seen == {"native": "service of snapshotter.native"}


async def test_host_failure_is_logged_with_the_plugin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="moorage.host"):
        async with host(tmp_path, rec.reg("a.one", init=fail)).running():
            pass
    [line] = [r for r in caplog.records if r.getMessage().startswith("plugin a.one error")]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == "plugin a.one error: RuntimeError: disk on fire"
    assert line.plugin == "a.one"  # type: ignore[attr-defined]


# -- required and disabled plugins ---------------------------------------------------


async def test_host_required_plugin_failing_stops_startup(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [
        rec.reg("events.exchange"),
        rec.reg("metadata.sqlite", init=fail),
        rec.reg("api.system"),
    ]
    config = 'required_plugins = ["metadata.sqlite"]'
    with pytest.raises(StartupError) as info:
        async with host(tmp_path, *regs, config=config).running():
            pytest.fail("must not start")
    assert str(info.value) == ("required plugin metadata.sqlite error: RuntimeError: disk on fire")
    # What had started is stopped again; what comes after never starts.
    assert rec.log == ["init events.exchange", "init metadata.sqlite", "close events.exchange"]


async def test_host_required_plugin_skipped_by_its_requirement(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [rec.reg("metadata.sqlite", init=fail), rec.reg("server.http", "metadata.sqlite")]
    with pytest.raises(StartupError) as info:
        async with host(tmp_path, *regs, config='required_plugins = ["server.http"]').running():
            pytest.fail("must not start")
    assert str(info.value) == (
        "required plugin server.http skip: requires metadata.sqlite, which is error: "
        "RuntimeError: disk on fire"
    )


async def test_host_required_plugin_disabled_stops_startup_before_any_init(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    config = 'required_plugins = ["a.one"]\ndisabled_plugins = ["a.one"]'
    with pytest.raises(StartupError) as info:
        async with host(tmp_path, rec.reg("a.one"), rec.reg("b.two"), config=config).running():
            pytest.fail("must not start")
    assert str(info.value) == (
        "required plugin a.one cannot start (disabled: listed in disabled_plugins)"
    )
    assert rec.log == []


async def test_host_disabled_plugin_is_not_started_and_dependants_skip(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [
        rec.reg("metadata.sqlite"),
        rec.reg("api.namespaces", "metadata.sqlite"),
        rec.reg("api.system"),
    ]
    config = 'disabled_plugins = ["metadata.sqlite"]'
    async with host(tmp_path, *regs, config=config).running() as plugins:
        assert statuses(plugins) == {
            "api.namespaces": (
                "skip",
                "requires metadata.sqlite, which is disabled: listed in disabled_plugins",
            ),
            "api.system": ("ok", ""),
            "metadata.sqlite": ("disabled", "listed in disabled_plugins"),
        }
    assert rec.log == ["init api.system", "close api.system"]


async def test_host_unprovided_requirement_fails_that_plugin_only(tmp_path: Path) -> None:
    """One package missing must not keep the daemon from starting (only required ones do)."""
    rec = Recorder()
    regs = [
        rec.reg("api.gc", "gc.scheduler", "tls"),
        rec.reg("server.http", "api"),
        rec.reg("api.system"),
    ]
    async with host(tmp_path, *regs).running() as plugins:
        assert statuses(plugins) == {
            "api.system": ("ok", ""),
            "server.http": ("ok", ""),
            "api.gc": ("error", "requires gc.scheduler, tls, which no plugin provides"),
        }
    assert "init api.gc" not in rec.log


async def test_host_dependant_of_an_unprovided_plugin_skips(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [rec.reg("api.gc", "gc.scheduler"), rec.reg("server.http", "api.gc")]
    async with host(tmp_path, *regs).running() as plugins:
        assert statuses(plugins)["server.http"] == (
            "skip",
            "requires api.gc, which is error: requires gc.scheduler, which no plugin provides",
        )


async def test_host_required_plugin_with_an_unprovided_requirement_stops_startup(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    config = 'required_plugins = ["api.gc"]'
    with pytest.raises(StartupError) as info:
        async with host(tmp_path, rec.reg("api.gc", "gc.scheduler"), config=config).running():
            pytest.fail("must not start")
    assert str(info.value) == (
        "required plugin api.gc cannot start "
        "(error: requires gc.scheduler, which no plugin provides)"
    )


async def test_host_dependency_cycle_is_a_startup_error(tmp_path: Path) -> None:
    rec = Recorder()
    with pytest.raises(StartupError, match=r"^dependency cycle: a\.one -> b\.two -> a\.one$"):
        async with host(tmp_path, rec.reg("a.one", "b.two"), rec.reg("b.two", "a.one")).running():
            pytest.fail("must not start")
    assert rec.log == []


def test_host_plan_orders_without_starting(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [rec.reg("server.http", "api"), rec.reg("api.gc", "gc.scheduler"), rec.reg("api.system")]
    records = host(tmp_path, *regs).plan()
    assert [(f"{r.type}.{r.id}", r.status.value) for r in records] == [
        ("api.system", "pending"),
        ("server.http", "pending"),
        ("api.gc", "error"),
    ]
    assert rec.log == []
    assert not (tmp_path / "root").exists()


def test_host_plan_reports_bad_plugin_config(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [rec.reg("greeter.basic", config=GreeterConfig)]
    with pytest.raises(ConfigError, match=r"key 'repeat': expected `int`, got `str`$"):
        host(tmp_path, *regs, config='[plugins."greeter.basic"]\nrepeat = "x"').plan()


# -- configuration -------------------------------------------------------------------


class GreeterConfig(PluginConfig):
    greeting: str = "hello"
    repeat: int = 1


async def test_host_decodes_the_plugin_section(tmp_path: Path) -> None:
    rec = Recorder()
    seen: list[GreeterConfig] = []

    async def init(ctx: InitContext[GreeterConfig]) -> None:
        seen.append(ctx.config)

    regs = [
        rec.reg("greeter.basic", init=init, config=GreeterConfig),
        rec.reg("greeter.plain", init=init, config=GreeterConfig),
    ]
    config = '[plugins."greeter.basic"]\ngreeting = "hi"\nrepeat = 2'
    async with host(tmp_path, *regs, config=config).running():
        pass
    assert seen == [GreeterConfig(greeting="hi", repeat=2), GreeterConfig()]


async def test_host_bad_plugin_value_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    rec = Recorder()
    regs = [rec.reg("greeter.basic", config=GreeterConfig)]
    config = '[plugins."greeter.basic"]\nrepeat = "twice"'
    with pytest.raises(ConfigError) as info:
        async with host(tmp_path, *regs, config=config).running():
            pytest.fail("must not start")
    assert str(info.value) == (
        "plugins.toml: [plugins.\"greeter.basic\"] key 'repeat': expected `int`, got `str`"
    )
    assert rec.log == []


# -- init context --------------------------------------------------------------------


async def test_host_init_context_carries_dirs_services_and_the_bus(tmp_path: Path) -> None:
    rec = Recorder()
    seen: dict[str, Any] = {}

    async def init(ctx: InitContext[Any]) -> None:
        seen.update(
            root=ctx.root,
            state=ctx.state,
            root_is_dir=ctx.root.is_dir(),
            state_is_dir=ctx.state.is_dir(),
            store=ctx.get("metadata.sqlite"),
            apis=ctx.get_by_type("api"),
            single=ctx.get_single("metadata"),
            events=ctx.events,
            daemon=ctx.daemon,
            registration=ctx.registration.name,
        )
        with pytest.raises(KeyError):
            ctx.get("api.unrequired")

    [events] = events_plugins()
    regs = [
        rec.reg("metadata.sqlite"),
        rec.reg("api.system"),
        rec.reg("api.unrequired"),
        rec.reg("gc.scheduler", "metadata.sqlite", "api.system", init=init),
        events,
    ]
    h = host(tmp_path, *regs)
    async with h.running() as plugins:
        exchange = plugins.get("events.exchange")
    assert seen["root"] == tmp_path / "root" / "gc.scheduler"
    assert seen["state"] == tmp_path / "state" / "gc.scheduler"
    assert seen["root_is_dir"] and seen["state_is_dir"]
    assert (seen["root"].stat().st_mode & 0o777, seen["state"].stat().st_mode & 0o777) == (
        0o700,
        0o700,
    )
    assert seen["store"] == "service of metadata.sqlite"
    assert seen["apis"] == {"system": "service of api.system"}
    assert seen["single"] == "service of metadata.sqlite"
    assert isinstance(exchange, Exchange)
    assert seen["events"] is exchange
    assert seen["daemon"] is h.config
    assert seen["registration"] == "gc.scheduler"


async def test_host_events_plugin_starts_first_so_every_context_has_the_bus(
    tmp_path: Path,
) -> None:
    buses: list[Any] = []

    async def init(ctx: InitContext[Any]) -> None:
        buses.append(ctx.events)

    rec = Recorder()
    [events] = events_plugins()
    async with host(tmp_path, rec.reg("a.one", init=init), events).running() as plugins:
        assert list(plugins.records) == ["events.exchange", "a.one"]
    assert isinstance(buses[0], Exchange)


async def test_host_get_single_refuses_several(tmp_path: Path) -> None:
    rec = Recorder()
    errors: list[str] = []

    async def init(ctx: InitContext[Any]) -> None:
        with pytest.raises(LookupError) as info:
            ctx.get_single("api")
        errors.append(str(info.value))

    regs = [rec.reg("api.one"), rec.reg("api.two"), rec.reg("server.http", "api", init=init)]
    async with host(tmp_path, *regs).running():
        pass
    assert errors == ["expected one running api plugin, found ['one', 'two']"]


# -- background tasks ----------------------------------------------------------------


class Background:
    """A plugin whose init starts a task with ``ctx.start`` and records its fate."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.started_value: Any = None

    async def task(self, label: str, *, task_status: TaskStatus[str]) -> None:
        task_status.started(f"{label} ready")
        try:
            await anyio.sleep_forever()
        finally:
            self.rec.log.append(f"task {label} ended")

    def init(self, then: Init | None = None) -> Init:
        async def init(ctx: InitContext[Any]) -> Any:
            self.started_value = await ctx.start(self.task, ctx.registration.name)
            return await then(ctx) if then else "service"

        return init


async def test_host_background_task_is_cancelled_after_close(tmp_path: Path) -> None:
    rec = Recorder()
    bg = Background(rec)
    async with host(tmp_path, rec.reg("gc.scheduler", init=bg.init())).running():
        assert bg.started_value == "gc.scheduler ready"
        rec.log.clear()
        await anyio.sleep(0)
        assert rec.log == []
    assert rec.log == ["close gc.scheduler", "task gc.scheduler ended"]


async def test_host_background_task_of_a_failed_init_is_cancelled(tmp_path: Path) -> None:
    rec = Recorder()
    bg = Background(rec)

    async def skip(ctx: InitContext[Any]) -> None:
        raise PluginSkipped("changed my mind")

    regs = [rec.reg("a.one", init=bg.init(fail)), rec.reg("b.two", init=bg.init(skip))]
    async with host(tmp_path, *regs).running() as plugins:
        with anyio.fail_after(5):
            while len([e for e in rec.log if e.startswith("task")]) < 2:
                await anyio.sleep(0.01)
        assert statuses(plugins)["a.one"][0] == "error"
        assert statuses(plugins)["b.two"] == ("skip", "changed my mind")
    assert sorted(e for e in rec.log if e.startswith("task")) == [
        "task a.one ended",
        "task b.two ended",
    ]


async def test_host_background_task_failure_does_not_stop_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()

    async def crash(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        raise RuntimeError("task crashed")

    async def init(ctx: InitContext[Any]) -> str:
        await ctx.start(crash, name="crasher")
        return "service"

    async with host(tmp_path, rec.reg("a.one", init=init), rec.reg("b.two")).running() as plugins:
        await anyio.sleep(0.05)
        assert plugins.records["b.two"].status == PluginStatus.OK
    assert any(
        r.getMessage() == "background task crasher of plugin a.one failed" for r in caplog.records
    )


async def test_start_outside_a_host_is_an_error(tmp_path: Path) -> None:
    rec = Recorder()
    ctx: InitContext[None] = InitContext(
        registration=rec.reg("a.one"),
        config=None,
        root=tmp_path,
        state=tmp_path,
        daemon=DaemonConfig(),
        plugins=PluginSet(),
        events=None,
    )

    async def task(*, task_status: TaskStatus[None]) -> None:
        task_status.started()

    with pytest.raises(RuntimeError, match=r"^no task group: the plugin was not started by a "):
        await ctx.start(task)


# -- stopping ------------------------------------------------------------------------


async def test_host_close_failure_is_logged_and_the_rest_still_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()

    async def init(ctx: InitContext[Any]) -> None:
        return None

    async def bad_close(service: Any) -> None:
        raise RuntimeError("close failed")

    broken = Registration(type="b", id="two", init=init, close=bad_close)
    async with host(tmp_path, rec.reg("a.one"), broken, rec.reg("c.three")).running() as plugins:
        rec.log.clear()
    assert rec.log == ["close c.three", "close a.one"]
    assert plugins.records["b.two"].status == PluginStatus.STOPPED
    assert "plugin b.two failed to close" in [r.getMessage() for r in caplog.records]


async def test_host_stops_plugins_when_the_body_raises(tmp_path: Path) -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match=r"^body failed$"):
        async with host(tmp_path, rec.reg("a.one")).running():
            raise ValueError("body failed")
    assert rec.log == ["init a.one", "close a.one"]


async def test_host_stops_plugins_when_cancelled(tmp_path: Path) -> None:
    rec = Recorder()
    with anyio.move_on_after(0.05):
        async with host(tmp_path, rec.reg("a.one")).running():
            await anyio.sleep_forever()
    assert rec.log == ["init a.one", "close a.one"]


def test_plugin_record_is_a_plain_struct() -> None:
    from runtime.core.host import PluginRecord

    record = PluginRecord(type="a", id="one", status=PluginStatus.SKIP, reason="r")
    assert msgspec.to_builtins(record)["status"] == "skip"
