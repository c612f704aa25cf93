"""The container lifecycle verbs: ``ps``, ``create``, ``exec``, ``stop``, ``start``, ``rm``..."""

from __future__ import annotations

import os
import sys

from runtime.cli.verbs import (
    LIVE,
    NAME_LABEL,
    adder,
    ago,
    client,
    each,
    name_of,
    resolve,
    task_of,
)

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["port_text", "register", "requested_ports"]

#: Containers the daemon stops at once in one ``stop`` (``runtime.plugins.tasks.verbs``).
PARALLEL = 8


def grace_seconds(text: str) -> float:
    """``stop -t``: seconds, 0 or more (a usage error, 125, naming the value otherwise)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: use a number of seconds, 0 or more")
    return value


def cpus(text: str) -> float:
    """``update --cpus``: a positive number of CPUs."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: use a positive number of CPUs, e.g. 1.5")
    return value


def memory_size(text: str) -> int:
    """``update --memory``: ``64m``, ``1g``, ``512k`` or bytes, more than 0."""
    import argparse

    from runtime.cli.run_mounts import parse_size

    try:
        value = parse_size(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: not a size (e.g. 64m, 1g)")
    return value


def register(sub: Any) -> None:
    """Add the lifecycle verbs."""
    import argparse

    from runtime.cli.run import add_spec_flags

    add = adder(sub)
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
    p.add_argument("-t", "--time", "--timeout", dest="time", type=grace_seconds, default=10.0,
                   help="seconds to wait before SIGKILL (default 10)")
    p.add_argument("-s", "--signal", default="",
                   help="the first signal (default: the image's StopSignal, else SIGTERM)")
    p.add_argument("containers", nargs="+")

    p = add("start", start, "start stopped or created containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach to its output")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+")

    p = add("restart", restart, "stop then start containers")
    p.add_argument("-t", "--time", "--timeout", dest="time", type=grace_seconds, default=10.0)
    p.add_argument("containers", nargs="+")

    p = add("kill", kill, "send a signal to running containers (default SIGKILL)")
    p.add_argument("-s", "--signal", default="SIGKILL")
    p.add_argument("containers", nargs="+")

    p = add("rm", rm, "remove containers (-f: running ones too)")
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    p.add_argument("-v", "--volumes", action="store_true", help="accepted for Docker's sake")
    p.add_argument("containers", nargs="+")

    p = add("wait", wait, "block until containers stop; print their exit codes")
    p.add_argument("containers", nargs="+")

    p = add("pause", pause, "freeze containers")
    p.add_argument("containers", nargs="+")
    p = add("unpause", unpause, "thaw containers")
    p.add_argument("containers", nargs="+")

    p = add("rename", rename, "give a container a new name")
    p.add_argument("container")
    p.add_argument("new_name")

    p = add("update", update, "change a container's cpu, memory or pids limits")
    p.add_argument("--cpus", type=cpus, default=None, help="CPU quota, e.g. 1.5")
    p.add_argument("-m", "--memory", type=memory_size, default=None,
                   help="memory limit, e.g. 64m")
    p.add_argument("--pids-limit", type=int, default=None)
    p.add_argument("containers", nargs="+")


def _status(task: Any) -> str:
    if task is None:
        return "Created"
    status = str(task.status)
    if status == "running":
        return "Up"
    if status == "paused":
        return "Up (Paused)"
    if status == "stopped":
        return f"Exited ({task.exit_status}) {ago(task.exited_at)}".rstrip()
    return status.capitalize()


def requested_ports(container: Any) -> list[Any]:
    """The ports ``-p`` asked for, as the container's spec records them."""
    from runtime.plugins.network.api import PORTS_ANNOTATION, decode_ports

    annotations = container.spec.get("annotations") or {}
    return decode_ports(annotations.get(PORTS_ANNOTATION, ""))


def port_text(p: Any) -> str:
    """``0.0.0.0:8080->80/tcp``, as ``docker ps`` shows a published port."""
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
    from runtime.plugins.restart.api import RESTART_COUNT_LABEL, RESTART_LABEL, STOPPED_LABEL

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
    task = task_of(api, container_id)
    if task is None or str(task.status) not in LIVE:
        return
    api.call("POST", f"/v1/tasks/{container_id}/stop", dict,
             body={"signal": signal, "timeout": grace}, timeout=grace + 60)


def _start(api: Any, container_id: str) -> None:
    """Start a container detached: a new task when the old one stopped."""
    _hold_policy(api, container_id, stopped=False)
    task = task_of(api, container_id)
    if task is not None and str(task.status) in LIVE:
        return
    if task is not None and str(task.status) == "created":
        api.start_task(container_id)
        return
    if task is not None:
        api.delete_task(container_id)
    api.create_task(container_id)
    api.start_task(container_id)


def ps(args: argparse.Namespace) -> int:
    """One table: id, image, command, created, status, ports, names."""
    import json

    api = client(args)
    tasks = {t.container_id: t for t in api.tasks()}
    rows = []
    for c in sorted(api.containers(), key=lambda c: c.created_at or 0, reverse=True):
        task = tasks.get(c.id)
        if not args.all and (task is None or str(task.status) not in LIVE):
            continue
        rows.append((c, task))
    if args.quiet:
        for c, _ in rows:
            print(c.id)
        return 0
    ports = _published(api, [c for c, _ in rows])
    if args.format == "json":
        out = [{"ID": c.id, "Image": c.image, "Command": _command(c),
                "CreatedAt": c.created_at.isoformat() if c.created_at else "",
                "Status": _status(t), "State": str(t.status) if t else "created",
                "ExitCode": t.exit_status if t else None,
                "Ports": ", ".join(port_text(p) for p in ports[c.id]), "Names": name_of(c),
                "Labels": c.labels} for c, t in rows]
        print(json.dumps(out, indent=2))
        return 0
    from runtime.cli.output import print_table

    def short(text: str) -> str:
        return text if args.no_trunc or len(text) <= 20 else text[:19] + "…"

    print_table(("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"),
                [(c.id[:12] if not args.no_trunc else c.id, c.image, f'"{short(_command(c))}"',
                  ago(c.created_at), _status(t),
                  ", ".join(port_text(p) for p in ports[c.id]), name_of(c))
                 for c, t in rows])
    return 0


def _published(api: Any, containers: list[Any]) -> dict[str, list[Any]]:
    """Each container's published ports (with the random host ports picked).

    The network's attachment says while the container is attached; otherwise
    the ports it asked for that name a host port.
    """
    from runtime.core.errors import MoorageError
    from runtime.plugins.network.api import Attachment

    attached: dict[str, list[Any]] = {}
    if any(requested_ports(c) for c in containers):
        try:
            for a in api.call("GET", "/v1/networks/attachments", list[Attachment]):
                attached[a.container_id] = list(a.ports)
        except MoorageError:
            pass  # no network plugin: nothing is published
    return {c.id: attached.get(c.id) or [p for p in requested_ports(c) if p.host_port]
            for c in containers}


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
        args.id = resolve(client(args), args.container)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_MOORAGE_FAILED
    from runtime.cli.run import expand_env

    args.env = expand_env(args.env)
    args.exec_id = ""
    return int(tasks_exec(args))


def stop(args: argparse.Namespace) -> int:
    """The stop signal, SIGKILL after ``-t`` seconds; prints each name (one request for all)."""
    from runtime.cli.each import report
    from runtime.cli.main import lean_client

    # The daemon stops PARALLEL containers at a time, each within the grace and its kill.
    rounds = -(-len(args.containers) // PARALLEL)
    return report(lean_client(args).stop_names(
        args.containers, signal=args.signal, timeout=args.time,
        wait=rounds * args.time + 60))


def start(args: argparse.Namespace) -> int:
    """Start containers (``-a``: attached to the first, exit with its status)."""
    if not (args.attach or args.interactive):
        return each(args.containers, _start, args)
    from runtime.cli.run import RunOptions, _attached

    api = client(args)
    container_id = resolve(api, args.containers[0])
    task = task_of(api, container_id)
    if task is not None and str(task.status) in LIVE:
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

    return each(args.containers, again, args)


def kill(args: argparse.Namespace) -> int:
    """Signal running containers (one request for all the names)."""
    from runtime.cli.each import report
    from runtime.cli.main import lean_client

    return report(lean_client(args).kill_names(args.containers, args.signal))


def rm(args: argparse.Namespace) -> int:
    """Remove containers with their tasks and snapshots; running ones only with ``-f``.

    One request for all the names: the daemon checks each one's task and holds its
    restart policy (``runtime.plugins.tasks.verbs``).
    """
    from runtime.cli.each import report
    from runtime.cli.main import lean_client

    return report(lean_client(args).rm_names(args.containers, force=args.force))


def wait(args: argparse.Namespace) -> int:
    """Print each container's exit code once it stopped."""

    def waited(api: Any, cid: str) -> None:
        print(api.wait_task(cid, timeout=None).exit_status)

    return each(args.containers, waited, args, echo=False)


def pause(args: argparse.Namespace) -> int:
    """Freeze containers."""
    return each(args.containers, lambda api, cid: api.pause_task(cid), args)


def unpause(args: argparse.Namespace) -> int:
    """Thaw containers."""
    return each(args.containers, lambda api, cid: api.resume_task(cid), args)


def rename(args: argparse.Namespace) -> int:
    """Give a container a new name (its id stays: records, snapshot and task use it)."""
    from runtime.core.errors import AlreadyExists, NotFound

    api = client(args)
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
    from runtime.core.errors import InvalidArgument

    # The values were checked by the parser (cpus, memory_size): a bad one is a usage error.
    resources: dict[str, Any] = {}
    if args.cpus is not None:
        resources["cpu"] = {"quota": int(args.cpus * 100000), "period": 100000}
    if args.memory is not None:
        resources["memory"] = {"limit": args.memory}
    if args.pids_limit is not None:
        resources["pids"] = {"limit": args.pids_limit}
    if not resources:
        raise InvalidArgument("nothing to update: give --cpus, --memory or --pids-limit")

    def apply(api: Any, cid: str) -> None:
        task = task_of(api, cid)
        if task is not None and str(task.status) in LIVE:
            api.update_task(cid, resources)
        spec = api.container(cid).spec
        linux = spec.setdefault("linux", {})
        current = linux.setdefault("resources", {})
        for key, value in resources.items():
            current.setdefault(key, {}).update(value)
        # Only linux.resources changed: no privilege the record does not already hold.
        api.update_container(cid, spec=spec, allow_privileged=True)

    return each(args.containers, apply, args)
