"""Registrations of ``runtime.runc`` and ``runtime.crun``: one service per runtime binary.

Both are the same code with a different default binary; an operator may point
either at another build through ``binary``. A runtime that cannot work on this
host (crun refuses hybrid cgroups) still starts: its tasks then fail with the
runtime's own message, which says more than a skipped plugin would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec

from runtime.core.config import AbsolutePath, Program
from runtime.core.hookspecs import hookimpl
from runtime.core.registration import InitContext, PluginConfig, PluginSkipped, Registration
from runtime.pkg.which import which
from runtime.plugins.runtime.api import Runtime
from runtime.plugins.runtime.runc.oci import OciRuntime
from runtime.plugins.runtime.runc.recovery import recover
from runtime.plugins.runtime.runc.service import RuncRuntime
from runtime.plugins.runtime.runc.supervisor import Supervisor

__all__ = ["RuntimeConfig", "moorage_plugins"]


class RuntimeConfig(PluginConfig):
    """``[plugins."runtime.runc"]`` (and ``runtime.crun``).

    Attributes:
        binary: The OCI runtime: a name on ``PATH`` or an absolute path.
        root: The runtime's own state directory (``--root``); default
            ``<state>/<id>-root`` (``/run/moorage/runc-root``).
        conmon: The monitor binary.
        systemd_cgroup: Let systemd manage cgroups (``--systemd-cgroup``).
        timeout: Seconds any runtime or monitor call may take.
        oom_check_interval: Seconds between OOM checks of a running task.
        exit_publish_grace: Seconds that exits found at startup wait for an
            event subscriber whose filters take them before being published
            anyway.
    """

    binary: Program = ""
    root: AbsolutePath = ""
    conmon: Program = "conmon"
    systemd_cgroup: bool = False
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    oom_check_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    exit_publish_grace: Annotated[float, msgspec.Meta(ge=0)] = 10.0


def _which(name: str, what: str) -> str:
    found = which(name)
    if found is None:
        raise PluginSkipped(f"{what} {name!r} not found on PATH")
    return found


def _init_for(default_binary: str) -> Callable[[InitContext[RuntimeConfig]], Awaitable[Any]]:
    async def init(ctx: InitContext[RuntimeConfig]) -> Runtime:
        config = ctx.config
        binary = _which(config.binary or default_binary, "OCI runtime")
        conmon = _which(config.conmon, "monitor")
        root = Path(config.root) if config.root else (
            Path(ctx.daemon.state) / f"{ctx.registration.id}-root")
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Searchable, not listable, as containerd's task state: the init of a task
        # in a user namespace reaches its bundle's rootfs as an unmapped user.
        ctx.state.chmod(0o711)
        events = ctx.events
        supervisor = Supervisor(
            ctx.publish, events.wait_for_subscriber if events is not None else None,
            interval=config.oom_check_interval, grace=config.exit_publish_grace)
        runtime = RuncRuntime(
            name=ctx.registration.name,
            oci=OciRuntime(binary, root, timeout=config.timeout,
                           systemd_cgroup=config.systemd_cgroup),
            runtime_path=binary, conmon=conmon, root=ctx.root, state=ctx.state,
            publish=ctx.publish, supervisor=supervisor, timeout=config.timeout,
            # Looked up per task, not required: the runtime works without a network plugin.
            network=lambda: next(iter(ctx.plugins.by_type("network").values()), None),
        )  # fmt: skip
        await recover(runtime)
        await ctx.start(supervisor.run, name=f"{ctx.registration.name} supervisor")
        return runtime

    return init


@hookimpl
def moorage_plugins() -> Iterator[Registration]:
    """The runc and crun runtimes."""
    for binary in ("runc", "crun"):
        yield Registration.named(
            f"runtime.{binary}", _init_for(binary), config=RuntimeConfig,
            description=f"OCI runtime {binary}, each task supervised by conmon")
