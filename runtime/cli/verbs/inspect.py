"""The verbs that look at things: ``inspect``, ``port``, ``top``, ``stats``, ``info``."""

from __future__ import annotations

import os
import sys
import time

from runtime.cli.verbs import LIVE, adder, client, name_of, resolve, task_of
from runtime.cli.verbs.containers import requested_ports

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["attached_ports", "image_config", "image_manifest", "register", "render"]


def register(sub: Any) -> None:
    """Add ``inspect``, ``port``, ``top``, ``stats`` and ``info``."""
    add = adder(sub)
    p = add("inspect", inspect, "containers or images as JSON")
    p.add_argument("--type", choices=("container", "image"), default="")
    p.add_argument("-f", "--format", default="", help="a template such as '{{.State.ExitCode}}'")
    p.add_argument("names", nargs="+")

    p = add("port", port, "published ports of a container")
    p.add_argument("container")
    p.add_argument("private_port", nargs="?", default="", metavar="PRIVATE_PORT[/PROTO]")

    p = add("info", info, "the daemon, its plugins and what it holds")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("top", top, "processes of a container")
    p.add_argument("container")

    p = add("stats", stats, "CPU, memory and pids of running containers")
    p.add_argument("--no-stream", action="store_true", help="print once and exit")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("containers", nargs="*")


def attached_ports(api: Any, container: Any) -> list[Any]:
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
    return requested_ports(container)


def port(args: argparse.Namespace) -> int:
    """``80/tcp -> 0.0.0.0:8080`` for each published port (or the one asked)."""
    from runtime.core.errors import NotFound

    api = client(args)
    container = api.container(resolve(api, args.container))
    want_port, _, want_proto = args.private_port.partition("/")
    shown = 0
    for p in attached_ports(api, container):
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

    api = client(args)
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

    api = client(args)
    if args.containers:
        ids = [resolve(api, ref) for ref in args.containers]
    else:
        ids = [t.container_id for t in api.tasks() if str(t.status) in LIVE]
    names = {c.id: name_of(c) for c in api.containers()}

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


def _container_doc(api: Any, container: Any) -> dict[str, Any]:
    import msgspec

    task = task_of(api, container.id)
    process = container.spec.get("process") or {}
    status = str(task.status) if task is not None else "created"
    return {
        "Id": container.id, "Name": name_of(container),
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
        "NetworkSettings": {"Ports": [str(p) for p in attached_ports(api, container)]},
        "Runtime": container.runtime.name, "Snapshotter": container.snapshotter,
        "Spec": container.spec, "Record": msgspec.to_builtins(container),
    }


def image_manifest(api: Any, target: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image manifest (this host's platform's when ``target`` is an index): doc, descriptor."""
    import json

    def blob(digest: str) -> Any:
        return json.loads(b"".join(api.read_content(digest)))

    doc = blob(target.digest)
    desc = {"mediaType": target.mediaType, "digest": target.digest, "size": target.size}
    if "manifests" in doc:
        machine = os.uname().machine
        os_, arch = "linux", {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
        choices = doc["manifests"]
        desc = next((m for m in choices if (m.get("platform") or {}).get("os") == os_
                     and m["platform"].get("architecture") == arch), choices[0])
        doc = blob(desc["digest"])
    return doc, desc


def image_config(api: Any, target: Any) -> dict[str, Any]:
    """The image configuration blob (for this host's platform when ``target`` is an index)."""
    import json

    manifest, _ = image_manifest(api, target)
    config: dict[str, Any] = json.loads(b"".join(api.read_content(
        manifest["config"]["digest"])))
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

    api = client(args)
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


def info(args: argparse.Namespace) -> int:
    """Versions, counts of containers and images, plugins and the host's cgroups."""
    import json

    import runtime

    api = client(args)
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
