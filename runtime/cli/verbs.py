"""The docker/nerdctl-style top-level verbs: ``ps``, ``exec``, ``stop``, ``rm``, ``inspect``...

They sit over the same API as the ctr-style trees (``containers``, ``tasks``,
``images``), which stay as they are. A container is named by its id, by the
name ``rename`` gave it (the :data:`NAME_LABEL` label) or by a unique prefix of
its id, as Docker users type them. Errors of the user's own making (an unknown
flag, a bad value) exit 125 after the subcommand's usage, as Docker's do.
"""

from __future__ import annotations

import os
import sys
import time

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "NAME_LABEL",
    "docker_parser",
    "register",
    "resolve",
]

#: The label holding a container's name once ``rename`` gave it one (its id otherwise).
NAME_LABEL = "moorage/name"
#: Exit status of a command line Moorage refused (Docker's).
EXIT_USAGE = 125
_LIVE = ("running", "paused")


def docker_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report its errors as Docker does: its own usage, then exit 125."""

    def error(message: str) -> Any:
        parser.print_usage(sys.stderr)
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message}\n"
                                f"See '{parser.prog} --help'.\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def register(sub: Any) -> None:
    """Add the top-level verbs."""
    import argparse

    from runtime.cli.run import add_spec_flags

    def add(name: str, handler: Callable[[Any], int], helptext: str,
            aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        p = docker_parser(sub.add_parser(name, help=helptext, aliases=list(aliases)))
        p.set_defaults(handler=handler)
        return p

    p = add("ps", ps, "list containers (running ones unless -a)")
    p.add_argument("-a", "--all", action="store_true", help="stopped and created ones too")
    p.add_argument("-q", "--quiet", action="store_true", help="print ids only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--no-trunc", action="store_true", help="do not shorten the command")

    p = add("create", create, "create a container from an image (not started)")
    add_spec_flags(p)
    p.add_argument("--name", default="", help="container id (default: random)")
    p.add_argument("--rm", action="store_true", help="the daemon removes it when it exits")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)

    p = add("exec", exec_, "run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-d", "--detach", action="store_true", help="print the exec id and return")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("-u", "--user", default="", help="uid[:gid] or name[:group]")
    p.add_argument("-w", "--workdir", default="", help="working directory")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)

    p = add("stop", stop, "stop containers: the stop signal, then SIGKILL after the grace")
    p.add_argument("-t", "--time", "--timeout", dest="time", type=float, default=10.0,
                   help="seconds to wait before SIGKILL (default 10)")
    p.add_argument("-s", "--signal", default="",
                   help="the first signal (default: the image's StopSignal, else SIGTERM)")
    p.add_argument("containers", nargs="+")

    p = add("start", start, "start stopped or created containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach to its output")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+")

    p = add("restart", restart, "stop then start containers")
    p.add_argument("-t", "--time", "--timeout", dest="time", type=float, default=10.0)
    p.add_argument("containers", nargs="+")

    p = add("kill", kill, "send a signal to running containers (default SIGKILL)")
    p.add_argument("-s", "--signal", default="SIGKILL")
    p.add_argument("containers", nargs="+")

    p = add("rm", rm, "remove containers (-f: running ones too)")
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    p.add_argument("-v", "--volumes", action="store_true", help="accepted for Docker's sake")
    p.add_argument("containers", nargs="+")

    p = add("rmi", rmi, "remove images")
    p.add_argument("-f", "--force", action="store_true", help="even if a container uses it")
    p.add_argument("images", nargs="+")

    p = add("inspect", inspect, "containers or images as JSON")
    p.add_argument("--type", choices=("container", "image"), default="")
    p.add_argument("-f", "--format", default="", help="a template such as '{{.State.ExitCode}}'")
    p.add_argument("names", nargs="+")

    p = add("port", port, "published ports of a container")
    p.add_argument("container")
    p.add_argument("private_port", nargs="?", default="", metavar="PRIVATE_PORT[/PROTO]")

    p = add("wait", wait, "block until containers stop; print their exit codes")
    p.add_argument("containers", nargs="+")

    p = add("pause", pause, "freeze containers")
    p.add_argument("containers", nargs="+")
    p = add("unpause", unpause, "thaw containers")
    p.add_argument("containers", nargs="+")

    p = add("tag", tag, "give an image another name")
    p.add_argument("source")
    p.add_argument("target")

    p = add("info", info, "the daemon, its plugins and what it holds")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("top", top, "processes of a container")
    p.add_argument("container")

    p = add("stats", stats, "CPU, memory and pids of running containers")
    p.add_argument("--no-stream", action="store_true", help="print once and exit")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("containers", nargs="*")

    p = add("rename", rename, "give a container a new name")
    p.add_argument("container")
    p.add_argument("new_name")

    volume = sub.add_parser("volume", help="named volumes (-v NAME:PATH)")
    vsub = volume.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    p = docker_parser(vsub.add_parser("create", help="create a volume"))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("name", nargs="?", default="", help="default: random")
    p.set_defaults(handler=volume_create)
    p = docker_parser(vsub.add_parser("ls", aliases=["list"], help="list volumes"))
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=volume_ls)
    p = docker_parser(vsub.add_parser("inspect", help="volumes as JSON"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=volume_inspect)
    p = docker_parser(vsub.add_parser("rm", aliases=["remove"],
                                      help="remove volumes (refused while mounted)"))
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=volume_rm)
    p = docker_parser(vsub.add_parser("prune", help="remove every volume no container uses"))
    p.add_argument("-f", "--force", action="store_true", help="accepted for Docker's sake")
    p.set_defaults(handler=volume_prune)

    p = add("update", update, "change a container's cpu, memory or pids limits")
    p.add_argument("--cpus", type=float, default=None, help="CPU quota, e.g. 1.5")
    p.add_argument("-m", "--memory", default="", help="memory limit, e.g. 64m")
    p.add_argument("--pids-limit", type=int, default=None)
    p.add_argument("containers", nargs="+")


# -- helpers -------------------------------------------------------------------------


def _api(args: Any) -> Any:
    from runtime.cli.main import client

    return client(args)


def resolve(api: Any, ref: str) -> str:
    """The id of the container ``ref`` names: its id, its name, or a unique id prefix."""
    from runtime.core.errors import InvalidArgument, NotFound

    try:
        return str(api.container(ref).id)
    except NotFound:
        pass
    except InvalidArgument:
        pass  # not a valid id: maybe a name or prefix still
    containers = api.containers()
    named = [c.id for c in containers if c.labels.get(NAME_LABEL) == ref]
    if len(named) == 1:
        return str(named[0])
    prefixed = [c.id for c in containers if c.id.startswith(ref)] if ref else []
    if len(prefixed) == 1:
        return str(prefixed[0])
    if prefixed:
        raise InvalidArgument(f"container {ref!r} is ambiguous: {', '.join(sorted(prefixed))}")
    raise NotFound(f"no such container: {ref}")


def _task(api: Any, container_id: str) -> Any:
    """The container's task, or ``None``."""
    from runtime.core.errors import NotFound

    try:
        return api.task(container_id)
    except NotFound:
        return None


def _each(refs: list[str], action: Callable[[Any, str], object], args: Any,
          echo: bool = True) -> int:
    """Resolve and act on every ref; report each failure; 1 if any failed."""
    from runtime.core.errors import MoorageError

    api = _api(args)
    failed = False
    for ref in refs:
        try:
            action(api, resolve(api, ref))
        except MoorageError as exc:
            print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
            failed = True
            continue
        if echo:
            print(ref)
    return 1 if failed else 0


def _name(container: Any) -> str:
    return str(container.labels.get(NAME_LABEL) or container.id)


def _ago(when: Any) -> str:
    """``5 seconds ago``, ``3 minutes ago``... (Docker's wording)."""
    from datetime import UTC, datetime

    if when is None:
        return ""
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a second ago" if seconds < 1 else f"{seconds} seconds ago"


def _status(task: Any) -> str:
    if task is None:
        return "Created"
    status = str(task.status)
    if status == "running":
        return "Up"
    if status == "paused":
        return "Up (Paused)"
    if status == "stopped":
        return f"Exited ({task.exit_status}) {_ago(task.exited_at)}".rstrip()
    return status.capitalize()


def _ports(container: Any) -> list[Any]:
    from runtime.plugins.network.api import PORTS_ANNOTATION, decode_ports

    annotations = container.spec.get("annotations") or {}
    return decode_ports(annotations.get(PORTS_ANNOTATION, ""))


def _attached_ports(api: Any, container: Any) -> list[Any]:
    """The ports the network published (host ports picked included), else the requested."""
    from runtime.core.errors import MoorageError
    from runtime.plugins.network.api import Attachment

    try:
        found: Attachment = api.call("GET", f"/v1/networks/attachments/{container.id}",
                                     Attachment)
        if found.ports:
            return list(found.ports)
    except MoorageError:
        pass
    return _ports(container)


def _port_text(p: Any) -> str:
    host = p.host_ip or "0.0.0.0"
    return f"{host}:{p.host_port}->{p.container_port}/{p.protocol}"


def _command(container: Any) -> str:
    import shlex

    args = (container.spec.get("process") or {}).get("args") or []
    return shlex.join(args)


def _hold_policy(api: Any, container_id: str, stopped: bool) -> None:
    """Tell the daemon's restart manager a user stopped (or started) the container.

    A manual stop cancels the restart policy until the next manual start, as in
    Docker; a start also resets the count ``on-failure:N`` is held to.
    """
    from runtime.plugins.restart.policy import RESTART_COUNT_LABEL, RESTART_LABEL, STOPPED_LABEL

    labels = api.container(container_id).labels
    if RESTART_LABEL not in labels:
        return
    if stopped:
        api.update_container(container_id, labels={STOPPED_LABEL: "true"})
    elif STOPPED_LABEL in labels or RESTART_COUNT_LABEL in labels:
        api.update_container(container_id, labels={STOPPED_LABEL: "", RESTART_COUNT_LABEL: ""})


def _stop(api: Any, container_id: str, grace: float, signal: str = "") -> None:
    """The stop signal (the image's StopSignal unless given), then SIGKILL after ``grace``.

    The daemon does both (``POST /v1/tasks/{id}/stop``), so the kill comes even if
    this client goes away meanwhile.
    """
    _hold_policy(api, container_id, stopped=True)
    task = _task(api, container_id)
    if task is None or str(task.status) not in _LIVE:
        return
    api.call("POST", f"/v1/tasks/{container_id}/stop", dict,
             body={"signal": signal, "timeout": grace}, timeout=grace + 60)


def _start(api: Any, container_id: str) -> None:
    """Start a container detached: a new task when the old one stopped."""
    _hold_policy(api, container_id, stopped=False)
    task = _task(api, container_id)
    if task is not None and str(task.status) in _LIVE:
        return
    if task is not None and str(task.status) == "created":
        api.start_task(container_id)
        return
    if task is not None:
        api.delete_task(container_id)
    api.create_task(container_id)
    api.start_task(container_id)


# -- containers ----------------------------------------------------------------------


def ps(args: argparse.Namespace) -> int:
    """One table: id, image, command, created, status, ports, names."""
    import json

    api = _api(args)
    tasks = {t.container_id: t for t in api.tasks()}
    rows = []
    for c in sorted(api.containers(), key=lambda c: c.created_at or 0, reverse=True):
        task = tasks.get(c.id)
        if not args.all and (task is None or str(task.status) not in _LIVE):
            continue
        rows.append((c, task))
    if args.quiet:
        for c, _ in rows:
            print(c.id)
        return 0
    if args.format == "json":
        out = [{"ID": c.id, "Image": c.image, "Command": _command(c),
                "CreatedAt": c.created_at.isoformat() if c.created_at else "",
                "Status": _status(t), "State": str(t.status) if t else "created",
                "ExitCode": t.exit_status if t else None,
                "Ports": ", ".join(_port_text(p) for p in _ports(c)), "Names": _name(c),
                "Labels": c.labels} for c, t in rows]
        print(json.dumps(out, indent=2))
        return 0
    from runtime.cli.output import print_table

    def short(text: str) -> str:
        return text if args.no_trunc or len(text) <= 20 else text[:19] + "…"

    print_table(("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"),
                [(c.id[:12] if not args.no_trunc else c.id, c.image, f'"{short(_command(c))}"',
                  _ago(c.created_at), _status(t), ", ".join(_port_text(p) for p in _ports(c)),
                  _name(c)) for c, t in rows])
    return 0


def create(args: argparse.Namespace) -> int:
    """``containers create`` with Docker's word order: the name is a flag."""
    from runtime.cli.containers import containers_create
    from runtime.cli.run import EXIT_MOORAGE_FAILED
    from runtime.core.errors import MoorageError

    args.id = args.name or os.urandom(6).hex()
    args.detach = True  # nobody stays attached: --rm is the daemon's job
    try:
        return containers_create(args)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_MOORAGE_FAILED


def exec_(args: argparse.Namespace) -> int:
    """Run a command in a running container; exit with its status."""
    from runtime.cli.containers import tasks_exec
    from runtime.cli.run import EXIT_MOORAGE_FAILED
    from runtime.core.errors import MoorageError

    try:
        args.id = resolve(_api(args), args.container)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_MOORAGE_FAILED
    from runtime.cli.run import expand_env

    args.env = expand_env(args.env)
    args.exec_id = ""
    return int(tasks_exec(args))


def stop(args: argparse.Namespace) -> int:
    """The stop signal, SIGKILL after ``-t`` seconds; prints each name."""
    return _each(args.containers, lambda api, cid: _stop(api, cid, args.time, args.signal),
                 args)


def start(args: argparse.Namespace) -> int:
    """Start containers (``-a``: attached to the first, exit with its status)."""
    if not (args.attach or args.interactive):
        return _each(args.containers, _start, args)
    from runtime.cli.run import RunOptions, _attached

    api = _api(args)
    container_id = resolve(api, args.containers[0])
    task = _task(api, container_id)
    if task is not None and str(task.status) in _LIVE:
        from runtime.core.errors import FailedPrecondition

        raise FailedPrecondition(f"container {args.containers[0]!r} is already running")
    _hold_policy(api, container_id, stopped=False)
    if task is not None and str(task.status) == "stopped":
        api.delete_task(container_id)
        task = None
    if task is None:
        api.create_task(container_id, stdin=args.interactive)
    terminal = bool((api.container(container_id).spec.get("process") or {}).get("terminal"))
    return _attached(api, container_id, RunOptions(tty=terminal, interactive=args.interactive))


def restart(args: argparse.Namespace) -> int:
    """Stop (with the grace) then start again, detached."""

    def again(api: Any, cid: str) -> None:
        _stop(api, cid, args.time)
        _start(api, cid)

    return _each(args.containers, again, args)


def kill(args: argparse.Namespace) -> int:
    """Signal running containers."""
    from runtime.core.errors import FailedPrecondition

    def signal(api: Any, cid: str) -> None:
        task = _task(api, cid)
        if task is None or str(task.status) not in _LIVE:
            raise FailedPrecondition(f"container {cid!r} is not running")
        api.kill_task(cid, args.signal)

    return _each(args.containers, signal, args)


def rm(args: argparse.Namespace) -> int:
    """Remove containers with their tasks and snapshots; running ones only with ``-f``."""
    from runtime.core.errors import FailedPrecondition

    def remove(api: Any, cid: str) -> None:
        task = _task(api, cid)
        if task is not None and str(task.status) in _LIVE and not args.force:
            raise FailedPrecondition(f"container {cid!r} is running: stop it first or use -f")
        _hold_policy(api, cid, stopped=True)
        api.remove(cid, force=True, snapshot=True)

    return _each(args.containers, remove, args)


def wait(args: argparse.Namespace) -> int:
    """Print each container's exit code once it stopped."""

    def waited(api: Any, cid: str) -> None:
        print(api.wait_task(cid, timeout=None).exit_status)

    return _each(args.containers, waited, args, echo=False)


def pause(args: argparse.Namespace) -> int:
    """Freeze containers."""
    return _each(args.containers, lambda api, cid: api.pause_task(cid), args)


def unpause(args: argparse.Namespace) -> int:
    """Thaw containers."""
    return _each(args.containers, lambda api, cid: api.resume_task(cid), args)


def rename(args: argparse.Namespace) -> int:
    """Give a container a new name (its id stays: records, snapshot and task use it)."""
    from runtime.core.errors import AlreadyExists, NotFound

    api = _api(args)
    container_id = resolve(api, args.container)
    try:
        taken = resolve(api, args.new_name)
    except NotFound:
        taken = ""
    if taken and taken != container_id:
        raise AlreadyExists(f"the name {args.new_name!r} is taken by container {taken!r}")
    api.update_container(container_id, labels={NAME_LABEL: args.new_name})
    return 0


def update(args: argparse.Namespace) -> int:
    """Apply new limits to the running task and keep them in the container's spec."""
    from runtime.cli.run import parse_size
    from runtime.core.errors import InvalidArgument

    resources: dict[str, Any] = {}
    if args.cpus is not None:
        if args.cpus <= 0:
            raise InvalidArgument(f"--cpus {args.cpus}: must be positive")
        resources["cpu"] = {"quota": int(args.cpus * 100000), "period": 100000}
    if args.memory:
        try:
            resources["memory"] = {"limit": parse_size(args.memory)}
        except ValueError:
            raise InvalidArgument(f"--memory {args.memory!r}: not a size") from None
    if args.pids_limit is not None:
        resources["pids"] = {"limit": args.pids_limit}
    if not resources:
        raise InvalidArgument("nothing to update: give --cpus, --memory or --pids-limit")

    def apply(api: Any, cid: str) -> None:
        task = _task(api, cid)
        if task is not None and str(task.status) in _LIVE:
            api.update_task(cid, resources)
        spec = api.container(cid).spec
        linux = spec.setdefault("linux", {})
        current = linux.setdefault("resources", {})
        for key, value in resources.items():
            current.setdefault(key, {}).update(value)
        # Only linux.resources changed: no privilege the record does not already hold.
        api.update_container(cid, spec=spec, allow_privileged=True)

    return _each(args.containers, apply, args)


def port(args: argparse.Namespace) -> int:
    """``80/tcp -> 0.0.0.0:8080`` for each published port (or the one asked)."""
    from runtime.core.errors import NotFound

    api = _api(args)
    container = api.container(resolve(api, args.container))
    want_port, _, want_proto = args.private_port.partition("/")
    shown = 0
    for p in _attached_ports(api, container):
        if want_port and (str(p.container_port) != want_port
                          or (want_proto and p.protocol != want_proto)):
            continue
        host = p.host_ip or "0.0.0.0"
        if want_port:
            print(f"{host}:{p.host_port}")
        else:
            print(f"{p.container_port}/{p.protocol} -> {host}:{p.host_port}")
        shown += 1
    if want_port and not shown:
        raise NotFound(f"no public port {args.private_port!r} published for {args.container}")
    return 0


def top(args: argparse.Namespace) -> int:
    """The container's processes, read from this host's /proc."""
    from runtime.cli.output import print_table

    api = _api(args)
    container_id = resolve(api, args.container)
    rows = []
    for p in api.task_pids(container_id):
        rows.append(_proc_row(p.pid))
    print_table(("UID", "PID", "PPID", "STIME", "TIME", "CMD"), rows)
    return 0


def _proc_row(pid: int) -> tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmd = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return ("?", str(pid), "?", "?", "?", "?")
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) // ticks
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    started = time.time() - uptime + int(fields[19]) / ticks
    return (str(uid), str(pid), fields[1], time.strftime("%H:%M", time.localtime(started)),
            f"{cpu // 3600:02d}:{cpu // 60 % 60:02d}:{cpu % 60:02d}", cmd)


def stats(args: argparse.Namespace) -> int:
    """CPU %, memory and pids; refreshed every second unless ``--no-stream``."""
    import contextlib
    import json

    from runtime.cli.containers import _bytes
    from runtime.cli.output import print_table
    from runtime.core.errors import MoorageError

    api = _api(args)
    if args.containers:
        ids = [resolve(api, ref) for ref in args.containers]
    else:
        ids = [t.container_id for t in api.tasks() if str(t.status) in _LIVE]
    names = {c.id: _name(c) for c in api.containers()}

    def sample() -> dict[str, Any]:
        found = {}
        for cid in ids:
            with contextlib.suppress(MoorageError):
                found[cid] = api.task_metrics(cid)
        return found

    before = sample()
    while True:
        time.sleep(0.5)
        after = sample()
        rows = []
        for cid, m in after.items():
            prev = before.get(cid)
            cpu = 0.0
            if prev is not None:
                elapsed = (m.timestamp - prev.timestamp).total_seconds()
                if elapsed > 0:
                    cpu = (m.cpu_usage_usec - prev.cpu_usage_usec) / 1e6 / elapsed * 100
            limit = m.memory_limit_bytes
            rows.append({"ID": cid, "Name": names.get(cid, cid), "CPUPerc": round(cpu, 2),
                         "MemUsage": m.memory_usage_bytes, "MemLimit": limit,
                         "MemPerc": round(m.memory_usage_bytes / limit * 100, 2) if limit else None,
                         "PIDs": m.pids_current})
        if args.format == "json":
            print(json.dumps(rows))
        else:
            if not args.no_stream:
                sys.stdout.write("\x1b[2J\x1b[H")
            print_table(("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"),
                        [(r["ID"][:12], r["Name"], f"{r['CPUPerc']:.2f}%",
                          f"{_bytes(r['MemUsage'])} / "
                          f"{_bytes(r['MemLimit']) if r['MemLimit'] else 'max'}",
                          f"{r['MemPerc']:.2f}%" if r["MemPerc"] is not None else "--",
                          r["PIDs"]) for r in rows])
        sys.stdout.flush()
        if args.no_stream:
            return 0
        before = after


# -- volumes -------------------------------------------------------------------------


def volume_create(args: argparse.Namespace) -> int:
    """Create a volume; print its name."""
    from runtime.cli.namespaces import parse_labels

    name = args.name or os.urandom(16).hex()
    found = _api(args).call("POST", "/v1/volumes", dict,
                            body={"name": name, "labels": parse_labels(args.label)})
    print(found["name"])
    return 0


def volume_ls(args: argparse.Namespace) -> int:
    """Volumes: name, mountpoint, the containers using them."""
    import json

    from runtime.cli.output import print_table

    found: list[dict[str, Any]] = _api(args).call("GET", "/v1/volumes", list)
    if args.quiet:
        for volume in found:
            print(volume["name"])
    elif args.format == "json":
        print(json.dumps(found, indent=2))
    else:
        print_table(("DRIVER", "VOLUME NAME", "USED BY", "MOUNTPOINT"),
                    [("local", v["name"], ",".join(v["used_by"]), v["mountpoint"])
                     for v in found])
    return 0


def volume_inspect(args: argparse.Namespace) -> int:
    """A JSON list of the named volumes."""
    import json

    api = _api(args)
    print(json.dumps([api.call("GET", f"/v1/volumes/{name}", dict) for name in args.names],
                     indent=2))
    return 0


def volume_rm(args: argparse.Namespace) -> int:
    """Remove volumes; one in use is refused (exit 125, nothing removed for it)."""
    from runtime.cli.each import for_each

    api = _api(args)
    code = for_each(args.names, lambda name: api.call("DELETE", f"/v1/volumes/{name}"))
    return EXIT_USAGE if code else 0


def volume_prune(args: argparse.Namespace) -> int:
    """Remove unused volumes; print their names."""
    for name in _api(args).call("POST", "/v1/volumes/prune", dict)["removed"]:
        print(name)
    return 0


# -- inspect -------------------------------------------------------------------------


def _container_doc(api: Any, container: Any) -> dict[str, Any]:
    import msgspec

    task = _task(api, container.id)
    process = container.spec.get("process") or {}
    status = str(task.status) if task is not None else "created"
    return {
        "Id": container.id, "Name": _name(container),
        "Created": container.created_at.isoformat() if container.created_at else "",
        "Image": container.image,
        "State": {"Status": "exited" if status == "stopped" else status,
                  "Running": status == "running", "Paused": status == "paused",
                  "Pid": task.pid if task is not None else 0,
                  "ExitCode": task.exit_status if task is not None else None,
                  "FinishedAt": task.exited_at.isoformat()
                  if task is not None and task.exited_at else ""},
        "Config": {"Cmd": process.get("args"), "Env": process.get("env"),
                   "WorkingDir": process.get("cwd"), "User": process.get("user"),
                   "Tty": bool(process.get("terminal")), "Labels": container.labels,
                   "Hostname": container.spec.get("hostname", "")},
        "Mounts": [m for m in container.spec.get("mounts") or []
                   if m.get("type") == "bind" or "bind" in (m.get("options") or [])],
        "NetworkSettings": {"Ports": [str(p) for p in _attached_ports(api, container)]},
        "Runtime": container.runtime.name, "Snapshotter": container.snapshotter,
        "Spec": container.spec, "Record": msgspec.to_builtins(container),
    }


def image_config(api: Any, target: Any) -> dict[str, Any]:
    """The image configuration blob (for this host's platform when ``target`` is an index)."""
    import json

    def blob(digest: str) -> Any:
        return json.loads(b"".join(api.read_content(digest)))

    doc = blob(target.digest)
    if "manifests" in doc:
        machine = os.uname().machine
        os_, arch = "linux", {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
        choices = doc["manifests"]
        chosen = next((m for m in choices if (m.get("platform") or {}).get("os") == os_
                       and m["platform"].get("architecture") == arch), choices[0])
        doc = blob(chosen["digest"])
    config: dict[str, Any] = blob(doc["config"]["digest"])
    return config


def _image_doc(api: Any, image: Any) -> dict[str, Any]:
    import msgspec

    config = image_config(api, image.target)
    run = config.get("config") or {}
    return {
        "Id": image.target.digest, "RepoTags": [image.name],
        "Created": config.get("created", ""),
        "Architecture": config.get("architecture", ""), "Os": config.get("os", ""),
        "Config": {key: run.get(key) for key in (
            "Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts",
            "Volumes", "StopSignal")},
        "RootFS": config.get("rootfs", {}), "Record": msgspec.to_builtins(image),
    }


def render(template: str, doc: Any) -> str:
    """A Go-template subset: ``{{.A.B}}`` and ``{{json .A}}``, as ``docker inspect -f``."""
    import json
    import re

    def value(path: str) -> Any:
        found = doc
        for part in [p for p in path.split(".") if p]:
            found = found.get(part) if isinstance(found, dict) else None
        return found

    def one(match: re.Match[str]) -> str:
        as_json, path = match.group(1), match.group(2)
        found = value(path)
        if as_json:
            return json.dumps(found)
        if found is None:
            return "<no value>"
        if isinstance(found, bool):
            return str(found).lower()
        return json.dumps(found) if isinstance(found, (dict, list)) else str(found)

    return re.sub(r"\{\{\s*(json\s+)?\.([\w.]*)\s*\}\}", one, template)


def inspect(args: argparse.Namespace) -> int:
    """A JSON list of the named containers and images (``-f``: a template per object)."""
    import json

    from runtime.core.errors import MoorageError, NotFound

    api = _api(args)
    docs, failed = [], False
    for name in args.names:
        try:
            doc = None
            if args.type in ("", "container"):
                try:
                    doc = _container_doc(api, api.container(resolve(api, name)))
                except NotFound:
                    if args.type == "container":
                        raise
            if doc is None:
                try:
                    doc = _image_doc(api, api.image(name))
                except NotFound:
                    raise NotFound(f"no such object: {name}") from None
        except MoorageError as exc:
            print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
            failed = True
            continue
        docs.append(doc)
    if args.format:
        for doc in docs:
            print(render(args.format, doc))
    else:
        print(json.dumps(docs, indent=2))
    return 1 if failed else 0


# -- images and the daemon -----------------------------------------------------------


def images(args: argparse.Namespace) -> int:
    """``docker images``: repository, tag, image id, created, size."""
    import json

    from runtime.cli.output import print_table
    from runtime.cli.transfers import human

    api = _api(args)
    found = sorted(api.images(), key=lambda i: i.name)
    if args.quiet:
        for image in found:
            print(image.target.digest.removeprefix("sha256:")[:12])
        return 0
    rows = []
    for image in found:
        repository, tag = _split_name(image.name)
        rows.append({"Repository": repository, "Tag": tag, "ID": image.target.digest,
                     "CreatedAt": image.created_at.isoformat() if image.created_at else "",
                     "Size": api.check_image(image.name).size})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print_table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"),
                [(r["Repository"], r["Tag"], r["ID"].removeprefix("sha256:")[:12],
                  _ago(i.created_at), human(r["Size"])) for r, i in zip(rows, found, strict=True)])
    return 0


def _split_name(name: str) -> tuple[str, str]:
    """``repo:tag`` (or ``repo@digest``) into repository and tag."""
    if "@" in name:
        return name.partition("@")[0], "<none>"
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "<none>"


def rmi(args: argparse.Namespace) -> int:
    """Remove images; one a container was made from only with ``-f``."""
    from runtime.cli.each import for_each
    from runtime.core.errors import FailedPrecondition

    api = _api(args)

    def remove(name: str) -> None:
        if not args.force:
            users = sorted(c.id for c in api.containers() if c.image == name)
            if users:
                raise FailedPrecondition(
                    f"image {name!r} is used by container {', '.join(users)}: use -f")
        api.delete_image(name)

    return for_each(args.images, remove)


def tag(args: argparse.Namespace) -> int:
    """Point TARGET where SOURCE points (replacing what TARGET named)."""
    from runtime.core.errors import AlreadyExists

    api = _api(args)
    source = api.image(args.source)
    try:
        api.create_image(args.target, source.target, source.labels)
    except AlreadyExists:
        api.update_image(args.target, target=source.target)
    return 0


def info(args: argparse.Namespace) -> int:
    """Versions, counts of containers and images, plugins and the host's cgroups."""
    import json

    import runtime

    api = _api(args)
    version = api.version()
    tasks = {t.container_id: str(t.status) for t in api.tasks()}
    containers = api.containers()
    plugins = api.plugins()
    states = [tasks.get(c.id, "created") for c in containers]
    doc = {
        "ServerVersion": version.version, "ClientVersion": runtime.__version__,
        "Address": api.address, "Namespace": api.namespace,
        "Containers": len(containers), "ContainersRunning": states.count("running"),
        "ContainersPaused": states.count("paused"),
        "ContainersStopped": states.count("stopped"),
        "Images": len(api.images()),
        "Plugins": {"Total": len(plugins),
                    "Errors": sorted(f"{p.type}.{p.id}" for p in plugins
                                     if str(getattr(p, "status", "")) == "error")},
        "Runtimes": sorted(p.id for p in plugins if p.type == "runtime"),
        "CgroupVersion": _cgroup_version(),
        "KernelVersion": os.uname().release, "OperatingSystem": os.uname().sysname,
    }
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return 0
    for key, value in doc.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {', '.join(v) if isinstance(v, list) else v}")
        else:
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def _cgroup_version() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "1 (hybrid)"
    return "1"
