"""``moorage containers ...``, ``moorage tasks ...`` and ``moorage logs``."""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the containers, tasks and logs commands."""
    import argparse

    from runtime.cli.main import add_list_command, add_output_flags
    from runtime.cli.run_flags import add_spec_flags

    c = sub.add_parser("containers", aliases=["c"], help="container records")
    csub = c.add_subparsers(dest="containers_command", required=True, metavar="COMMAND")
    p = csub.add_parser("create", help="create a container (no task yet)")
    add_spec_flags(p)
    p.add_argument("image")
    p.add_argument("id")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=containers_create)
    add_list_command(csub, "list containers", containers_ls)
    p = csub.add_parser("info", help="a container as JSON (spec included)")
    p.add_argument("id")
    p.set_defaults(handler=containers_info)
    p = csub.add_parser("rm", aliases=["delete"], help="delete containers and their snapshots")
    p.add_argument("-f", "--force", action="store_true", help="kill and delete their tasks")
    p.add_argument("--keep-snapshot", action="store_true",
                   help="keep the root filesystem's snapshot (as ctr's flag)")
    p.add_argument("ids", nargs="+")
    p.set_defaults(handler=containers_rm)

    t = sub.add_parser("tasks", aliases=["t"], help="running containers")
    tsub = t.add_subparsers(dest="tasks_command", required=True, metavar="COMMAND")
    add_list_command(tsub, "list tasks", tasks_ls)
    p = tsub.add_parser("start", help="create and start a container's task")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("id")
    p.set_defaults(handler=tasks_start)
    p = tsub.add_parser("kill", help="signal tasks (many ids: one request)")
    p.add_argument("-s", "--signal", default="SIGTERM")
    p.add_argument("-a", "--all", action="store_true", help="every process of the task")
    p.add_argument("--exec-id", default="", help="an exec of the one task named")
    p.add_argument("ids", nargs="+")
    p.set_defaults(handler=tasks_kill)
    p = tsub.add_parser("rm", aliases=["delete"], help="delete stopped tasks")
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    p.add_argument("--exec-id", default="")
    p.add_argument("ids", nargs="+")
    p.set_defaults(handler=tasks_rm)
    p = tsub.add_parser("exec", help="run another process in a task")
    p.add_argument("--exec-id", default="", help="default: random")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("id")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=tasks_exec)
    p = tsub.add_parser("ps", help="processes of a task")
    add_output_flags(p)
    p.add_argument("id")
    p.set_defaults(handler=tasks_ps)
    for name, helptext in (("pause", "freeze tasks"), ("resume", "thaw tasks")):
        p = tsub.add_parser(name, help=helptext)
        p.add_argument("ids", nargs="+")
        p.set_defaults(handler=tasks_pause if name == "pause" else tasks_resume)
    p = tsub.add_parser("metrics", help="cgroup figures of a task")
    add_output_flags(p)
    p.add_argument("id")
    p.set_defaults(handler=tasks_metrics)
    p = tsub.add_parser("attach", help="attach to a task's stdio")
    p.add_argument("--exec-id", default="")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("id")
    p.set_defaults(handler=tasks_attach)
    p = tsub.add_parser("wait", help="wait for a task to exit; exit with its status")
    p.add_argument("--exec-id", default="")
    p.add_argument("id")
    p.set_defaults(handler=tasks_wait)

    from runtime.cli.verbs import docker_parser

    p = docker_parser(sub.add_parser("logs", help="output of a task"))
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", default="all", metavar="N", help="only the last N lines")
    p.add_argument("--since", default="", metavar="TIME",
                   help="only output since TIME (2026-01-02T15:04:05Z, a unix time, or 10m)")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line's time")
    p.add_argument("--exec-id", default="")
    p.add_argument("id")
    p.set_defaults(handler=logs)


def _age(when: Any) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else ""


# -- containers ----------------------------------------------------------------------


def containers_create(args: argparse.Namespace) -> int:
    """Create a container record from an image (or ``--rootfs``)."""
    from runtime.cli.main import client
    from runtime.cli.namespaces import parse_labels
    from runtime.cli.run import prepare_rootfs
    from runtime.cli.run_flags import check_pull, policy_labels, spec_options_from

    api = client(args)
    labels = {**parse_labels(args.label), **policy_labels(args)}
    pull = check_pull(args.pull)
    spec_options = spec_options_from(args, list(args.command), api)
    if not args.rootfs:
        from runtime.cli.images import ensure_image

        ensure_image(args, api, args.image, pull)
    # Host namespaces and privileges only on the user's explicit word (these flags).
    allow = bool(args.privileged or args.network == "host")
    prepared = None if args.rootfs else prepare_rootfs(api, args.image, args.id,
                                                        args.snapshotter)
    try:
        container = api.create_container(
            args.id, image=args.image, runtime=args.runtime, spec_options=spec_options,
            image_config=prepared.config if prepared else None,
            snapshotter=prepared.snapshotter if prepared else "",
            snapshot_key=prepared.key if prepared else "", labels=labels,
            allow_privileged=allow)
    finally:
        if prepared is not None:
            prepared.release(api)
    if args.rootfs:
        # The runtime bind-mounts an absolute root.path when no snapshot is given.
        import os

        container.spec["root"]["path"] = os.path.abspath(args.rootfs)
        api.update_container(args.id, spec=container.spec, allow_privileged=allow)
    print(container.id)
    return 0


def containers_ls(args: argparse.Namespace) -> int:
    """List containers."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(args, client(args).containers(args.filters),
         headers=("ID", "IMAGE", "RUNTIME", "CREATED"),
         row=lambda c: (c.id, c.image, c.runtime.name, _age(c.created_at)),
         ident=lambda c: c.id)
    return 0


def containers_info(args: argparse.Namespace) -> int:
    """Print one container as JSON."""
    import msgspec

    from runtime.cli.main import client

    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(
        client(args).container(args.id))) + b"\n")
    return 0


def containers_rm(args: argparse.Namespace) -> int:
    """Delete containers with their snapshots (``-f``: their tasks first); one request for all.

    The snapshot goes at once, as with ``ctr containers rm``: left to the garbage
    collector, it would keep the container's id (its key) taken a while longer.
    """
    from runtime.cli.each import report
    from runtime.cli.main import lean_client

    return report(lean_client(args).remove_many(args.ids, force=args.force,
                                                snapshot=not args.keep_snapshot))


# -- tasks -------------------------------------------------------------------------


def tasks_ls(args: argparse.Namespace) -> int:
    """List tasks."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(args, client(args).tasks(args.filters),
         headers=("TASK", "PID", "STATUS", "EXIT", "RUNTIME"),
         row=lambda t: (t.container_id, t.pid, t.status,
                        "" if t.exit_status is None else t.exit_status, t.runtime),
         ident=lambda t: t.container_id)
    return 0


def tasks_start(args: argparse.Namespace) -> int:
    """Create a container's task and start it (attached unless ``-d``)."""
    from runtime.cli.main import client
    from runtime.cli.run import RunOptions, _attached

    api = client(args)
    container = api.container(args.id)
    terminal = bool(container.spec.get("process", {}).get("terminal", False))
    api.create_task(args.id, stdin=args.interactive)
    if args.detach:
        api.start_task(args.id)
        return 0
    return _attached(api, args.id, RunOptions(tty=terminal, interactive=args.interactive))


def tasks_kill(args: argparse.Namespace) -> int:
    """Signal tasks (many in one request) or one task's exec."""
    from runtime.cli.main import lean_client

    api = lean_client(args)
    if len(args.ids) == 1:
        api.kill_task(args.ids[0], args.signal, all=args.all, exec_id=args.exec_id)
        return 0
    if args.exec_id:
        print("moorage: tasks kill --exec-id names an exec of one task", file=sys.stderr)
        return 2
    from runtime.cli.each import report

    return report(api.kill_tasks(args.ids, args.signal, all=args.all), echo=False)


def tasks_rm(args: argparse.Namespace) -> int:
    """Delete tasks (``-f``: kill first; one request for all) or an exec of each."""
    from runtime.cli.main import lean_client

    api = lean_client(args)
    if not args.exec_id:
        from runtime.cli.each import report

        return report(api.delete_tasks(args.ids, force=args.force))
    from runtime.cli.each import for_each

    return for_each(args.ids, lambda task_id: api.delete_task(task_id, args.exec_id,
                                                              result=False))


def tasks_exec(args: argparse.Namespace) -> int:
    """Run a command in a task; exit with its status (126/127 if it cannot run)."""
    import os
    import secrets

    from runtime.cli.main import client
    from runtime.cli.run import EXIT_MOORAGE_FAILED, exit_code_for
    from runtime.cli.terminal import relay
    from runtime.core.errors import MoorageError

    if not args.command:
        print("moorage: tasks exec needs a command", file=sys.stderr)
        return EXIT_MOORAGE_FAILED
    api = client(args)
    exec_id = args.exec_id or f"exec-{secrets.token_hex(4)}"
    try:
        api.exec_task(args.id, exec_id, args.command, env=args.env, cwd=args.workdir,
                      user=args.user, terminal=args.tty, stdin=args.interactive)
        if args.detach:
            api.start_task(args.id, exec_id)
            print(exec_id)
            return 0
        attachment = api.attach_task(args.id, exec_id, stdin=args.interactive, start=True)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        _drop_exec(api, args.id, exec_id)
        return exit_code_for(exc)
    try:
        status = relay(attachment, stdin=args.interactive,
                       tty_mode=args.tty and os.isatty(sys.stdin.fileno()),
                       on_signal=lambda signum: api.kill_task(args.id, signum, exec_id=exec_id))
    except MoorageError as exc:
        # The start itself failed (reported on the attach stream): not found, not executable.
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        _drop_exec(api, args.id, exec_id)
        return exit_code_for(exc)
    finally:
        attachment.close()
    if status is None:
        status = api.wait_task(args.id, exec_id).exit_status
    _drop_exec(api, args.id, exec_id)
    return int(status)


def _drop_exec(api: Any, task_id: str, exec_id: str) -> None:
    import contextlib

    from runtime.core.errors import MoorageError

    with contextlib.suppress(MoorageError):
        api.delete_task(task_id, exec_id)


def tasks_ps(args: argparse.Namespace) -> int:
    """Processes of a task."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    emit(args, client(args).task_pids(args.id), headers=("PID", "EXEC"),
         row=lambda p: (p.pid, p.exec_id), ident=lambda p: str(p.pid))
    return 0


def tasks_pause(args: argparse.Namespace) -> int:
    """Freeze tasks."""
    from runtime.cli.main import client

    api = client(args)
    for task_id in args.ids:
        api.pause_task(task_id)
    return 0


def tasks_resume(args: argparse.Namespace) -> int:
    """Thaw tasks."""
    from runtime.cli.main import client

    api = client(args)
    for task_id in args.ids:
        api.resume_task(task_id)
    return 0


def _bytes(value: int) -> str:
    """:func:`runtime.cli.transfers.human`, imported on first use: a fast-path module."""
    from runtime.cli.transfers import human

    return human(value)


def tasks_metrics(args: argparse.Namespace) -> int:
    """CPU, memory, pids and IO of a task (``--format json``: the raw figures)."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    def limit(value: int | None, fmt: Any = str) -> str:
        return "max" if value is None else str(fmt(value))

    emit(args, client(args).task_metrics(args.id),
         headers=("TASK", "CPU", "MEMORY", "PIDS", "IO_READ", "IO_WRITE", "OOM_KILLS",
                  "CGROUP"),
         row=lambda m: (m.container_id, f"{m.cpu_usage_usec / 1e6:.2f}s",
                        f"{_bytes(m.memory_usage_bytes)} / {limit(m.memory_limit_bytes, _bytes)}",
                        f"{m.pids_current} / {limit(m.pids_limit)}", _bytes(m.io_read_bytes),
                        _bytes(m.io_write_bytes), m.oom_kills, m.cgroup),
         ident=lambda m: m.container_id)
    return 0


def tasks_attach(args: argparse.Namespace) -> int:
    """Attach to a running process; exit with its status when it ends."""
    import os

    from runtime.cli.main import client
    from runtime.cli.terminal import relay

    api = client(args)
    state = api.task(args.id)
    terminal = state.terminal if not args.exec_id else next(
        (e.terminal for e in state.execs if e.id == args.exec_id), False)
    attachment = api.attach_task(args.id, args.exec_id, stdin=args.interactive)
    try:
        status = relay(attachment, stdin=args.interactive,
                       tty_mode=terminal and os.isatty(sys.stdin.fileno()))
    finally:
        attachment.close()
    return 0 if status is None else int(status)


def tasks_wait(args: argparse.Namespace) -> int:
    """Block until the process exits; exit with its status."""
    import json

    from runtime.cli.main import client

    result = client(args).wait_task(args.id, args.exec_id)
    print(json.dumps({"exit_status": result.exit_status,
                      "exited_at": result.exited_at.isoformat() if result.exited_at else None}))
    return int(result.exit_status)


def parse_since(text: str, now: Any = None) -> Any:
    """``--since``: an RFC 3339 time, a unix time, or a duration back from now (``90s``)."""
    from datetime import UTC, datetime, timedelta

    from runtime.core.errors import InvalidArgument

    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
            return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"--since {text!r}: use a time (RFC 3339), a unix time "
                              "or a duration such as 10m") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _lines(entries: Any) -> Any:
    """Log entries cut at line ends, so that ``--tail`` and ``-t`` work on lines."""
    for entry in entries:
        for piece in entry.data.splitlines(keepends=True):
            yield entry.time, entry.stream, piece


def logs(args: argparse.Namespace) -> int:
    """Print a task's output to stdout and stderr as it was written."""
    from runtime.cli.main import client
    from runtime.cli.verbs import resolve
    from runtime.core.errors import InvalidArgument

    tail = -1
    if args.tail != "all":
        if not args.tail.isdigit():
            raise InvalidArgument(f"--tail {args.tail!r}: use a number of lines or 'all'")
        tail = int(args.tail)
    since = parse_since(args.since) if args.since else None
    api = client(args)
    task_id = resolve(api, args.id)
    skip = 0
    if tail >= 0:
        history = list(_lines(api.task_logs(task_id, args.exec_id)))
        if not args.follow:
            lines: Any = history[len(history) - tail:] if tail else []
        else:
            skip = max(0, len(history) - tail)
    if tail < 0 or args.follow:
        lines = _lines(api.task_logs(task_id, args.exec_id, follow=args.follow))
    out, err = sys.stdout, sys.stderr
    for when, name, piece in lines:
        if skip:
            skip -= 1
            continue
        if since is not None and when < since:
            continue
        stream = err if name == "stderr" else out
        if args.timestamps:
            piece = f"{when.isoformat().replace('+00:00', 'Z')} {piece}"
        stream.write(piece)
        stream.flush()
    return 0
