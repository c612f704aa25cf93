"""``moorage run``: create a container from an image (or a directory) and run it.

:func:`run_container` is the whole flow, usable without argparse::

    code = run_container(client, "busybox", ["sh", "-c", "exit 7"], RunOptions(remove=True))

Exit codes follow Docker: the container's own, 125 when Moorage itself
failed, 126 when the command cannot be executed, 127 when it is not found.
"""

from __future__ import annotations

import os
import sys

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call);
# argparse is imported only to build the parser: `moorage run` itself goes
# without it (runtime.cli.main._FAST).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_MOORAGE_FAILED",
    "EXIT_NOT_FOUND",
    "PreparedRootfs",
    "RunOptions",
    "add_spec_flags",
    "exit_code_for",
    "prepare_rootfs",
    "register",
    "run_container",
    "spec_options_from",
]

EXIT_MOORAGE_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: The daemon's error codes for a command that cannot run (runtime.core.errors).
_EXIT_BY_CODE = {"command_not_found": EXIT_NOT_FOUND, "command_not_executable": EXIT_CANNOT_EXECUTE}


class RunOptions:
    """What ``moorage run`` was asked (see its ``--help``).

    A plain class: ``dataclasses`` (with ``inspect``) would be the largest
    import of ``moorage run``.
    """

    def __init__(self, name: str = "", remove: bool = False, detach: bool = False,
                 tty: bool = False, interactive: bool = False, runtime: str = "runc",
                 snapshotter: str = "", rootfs: str = "",
                 labels: dict[str, str] | None = None, spec: Any = None,
                 pull: str = "never", puller: Any = None) -> None:
        self.name = name
        self.remove = remove
        self.detach = detach
        self.tty = tty
        self.interactive = interactive
        self.runtime = runtime
        self.snapshotter = snapshotter
        self.rootfs = rootfs
        self.labels: dict[str, str] = dict(labels or {})
        #: SpecOptions (a Struct or its JSON object) without args; completed by run_container.
        self.spec = spec
        #: ``missing`` (pull an image not stored yet), ``always`` or ``never``.
        self.pull = pull
        #: ``puller(image)`` pulls the image, showing progress (needed unless pull is never).
        self.puller = puller

    def __repr__(self) -> str:
        return f"RunOptions({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``512k`` or bytes into bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_mount(text: str) -> dict[str, Any]:
    """``type=bind,src=/a,dst=/b,options=ro:rbind`` into a SpecMount JSON object."""
    from runtime.core.errors import InvalidArgument

    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            if key in ("ro", "readonly"):
                fields["options"] = ":".join(filter(None, [fields.get("options", ""), "ro"]))
                continue
            raise InvalidArgument(f"--mount {text!r}: expected key=value pairs")
        fields[key.strip()] = value.strip()
    source = fields.get("src") or fields.get("source") or ""
    dest = fields.get("dst") or fields.get("destination") or fields.get("target") or ""
    if not dest:
        raise InvalidArgument(f"--mount {text!r}: dst= is required")
    options = [o for o in fields.get("options", "").split(":") if o]
    if fields.get("type") == "volume":
        if not source:
            raise InvalidArgument(f"--mount {text!r}: a volume needs src=NAME")
        volume = parse_volume(f"{source}:{dest}")
        volume["options"] += [o for o in options if o not in volume["options"]]
        return volume
    return {"destination": dest, "source": os.path.abspath(source) if source else "",
            "type": fields.get("type", "bind"), "options": options}


_VOLUME_OPTIONS = {"ro": "ro", "rw": "rw", "z": "", "Z": "", "rprivate": "rprivate",
                   "private": "private", "rshared": "rshared", "shared": "shared",
                   "rslave": "rslave", "slave": "slave", "nocopy": ""}


def parse_volume(text: str) -> dict[str, Any]:
    """``-v HOST:CONTAINER[:ro]`` into a bind SpecMount JSON object (host path must exist)."""
    from runtime.core.errors import InvalidArgument

    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"-v {text!r}: expected HOST_PATH:CONTAINER_PATH[:ro|rw]")
    source, dest = parts[0], parts[1]
    if not dest.startswith("/"):
        raise InvalidArgument(f"-v {text!r}: the container path {dest!r} must be absolute")
    named = not source.startswith(("/", ".", "~"))
    if named:
        if not all(c.isalnum() or c in "._-" for c in source) or not source[0].isalnum():
            raise InvalidArgument(f"-v {text!r}: {source!r} is neither an absolute host path "
                                  "nor a volume name")
    else:
        source = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(source):
            raise InvalidArgument(f"-v {text!r}: host path {source!r} does not exist")
    options = ["rbind"]
    for option in (parts[2].split(",") if len(parts) == 3 else []):
        if option not in _VOLUME_OPTIONS:
            raise InvalidArgument(f"-v {text!r}: unknown option {option!r} (ro, rw...)")
        if _VOLUME_OPTIONS[option]:
            options.append(_VOLUME_OPTIONS[option])
    if named:
        # Resolved to the volume's directory by resolve_volumes, once a client is at hand.
        return {"destination": dest, "volume": source, "type": "bind", "options": options}
    return {"destination": dest, "source": source, "type": "bind", "options": options}


def resolve_volumes(api: Any, spec: dict[str, Any]) -> None:
    """Bind each named volume of ``spec``'s mounts to its directory (made if it is new)."""
    for mount in spec.get("mounts") or []:
        name = mount.pop("volume", None)
        if name is None:
            continue
        body = {"name": name, "exist_ok": True}
        if hasattr(api, "stream_lines"):  # the typed client
            found = api.call("POST", "/v1/volumes", dict, body=body)["mountpoint"]
        else:
            found = api.call("POST", "/v1/volumes", body).mountpoint
        mount["source"] = found


def parse_tmpfs(text: str) -> dict[str, Any]:
    """``--tmpfs /run[:size=64m,mode=1777]`` into a tmpfs SpecMount JSON object."""
    from runtime.core.errors import InvalidArgument

    dest, _, options = text.partition(":")
    if not dest.startswith("/"):
        raise InvalidArgument(f"--tmpfs {text!r}: the container path must be absolute")
    given = [o for o in options.split(",") if o]
    for option in given:
        key = option.partition("=")[0]
        if not key or not all(c.isalnum() or c in "_-" for c in key):
            raise InvalidArgument(f"--tmpfs {text!r}: bad option {option!r}")
    return {"destination": dest, "source": "tmpfs", "type": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", *given]}


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``run`` and ``containers create``."""
    import argparse

    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="KEY alone takes this shell's value")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="KEY=VALUE lines (# comments); read before -e")
    p.add_argument("--pull", default="missing", metavar="missing|always|never",
                   help="pull the image first: when missing (default), always or never")
    p.add_argument("--restart", default="no", metavar="POLICY",
                   help="no (default), always, on-failure[:N] or unless-stopped")
    p.add_argument("-u", "--user", default="", help="uid[:gid] or name[:group]")
    p.add_argument("-w", "--workdir", default="", help="working directory in the container")
    p.add_argument("--entrypoint", default=None, help="replace the image's entrypoint")
    p.add_argument("--hostname", default="")
    p.add_argument("--mount", action="append", default=[],
                   metavar="type=bind,src=PATH,dst=PATH[,options=ro:rbind]")
    p.add_argument("-v", "--volume", action="append", default=[],
                   metavar="HOST_PATH:CONTAINER_PATH[:ro|rw]",
                   help="bind-mount a host directory or file")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
                   help="mount a tmpfs (options such as size=64m,mode=1777)")
    p.add_argument("--read-only", action="store_true", help="read-only root filesystem")
    p.add_argument("--privileged", action="store_true",
                   help="all capabilities and devices, no seccomp filter")
    p.add_argument("--security-opt", action="append", default=[], metavar="seccomp=PROFILE",
                   help="seccomp=unconfined (no filter) or seccomp=PATH (a JSON profile)")
    p.add_argument("--cpus", type=float, default=0.0, help="CPU quota, e.g. 1.5")
    p.add_argument("--memory", "-m", default="", help="memory limit, e.g. 64m")
    p.add_argument("--pids-limit", type=int, default=0)
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--runtime", default="runc", help="runtime plugin (runc, crun)")
    p.add_argument("--snapshotter", default="", help="snapshotter for the image's rootfs")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--net", "--network", dest="network", default="bridge", metavar="NETWORK",
                   help="bridge (default), host, none, or a network's name")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]",
                   help="publish a container port on the host")
    # Runs a plain directory instead of an image; for tests and image-less hosts.
    p.add_argument("--rootfs", default="", help=argparse.SUPPRESS)


def expand_env(values: list[str], environ: Any = None) -> list[str]:
    """``-e KEY=VALUE`` as given; ``-e KEY`` takes the client's value (left out when unset)."""
    environ = os.environ if environ is None else environ
    out = []
    for value in values:
        if "=" in value:
            out.append(value)
        elif value in environ:
            out.append(f"{value}={environ[value]}")
    return out


def read_env_files(paths: list[str]) -> list[str]:
    """The ``KEY=VALUE`` (or ``KEY``) lines of ``--env-file`` files, comments left out."""
    from runtime.core.errors import InvalidArgument

    found = []
    for path in paths:
        try:
            with open(path) as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"--env-file {path!r}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith("=") or any(c.isspace() for c in text.partition("=")[0]):
                raise InvalidArgument(f"--env-file {path!r} line {number}: {line!r} is not "
                                      "KEY=VALUE")
            found.append(text)
    return found


def policy_labels(args: Any) -> dict[str, str]:
    """The labels ``--restart`` (and ``-d --rm``) ask the daemon's restart manager for."""
    from runtime.core.errors import InvalidArgument

    labels: dict[str, str] = {}
    restart = getattr(args, "restart", "no") or "no"
    remove_at_exit = getattr(args, "rm", False) and getattr(args, "detach", False)
    if restart == "no" and not remove_at_exit:
        return labels
    from runtime.plugins.restart.policy import AUTO_REMOVE_LABEL, RESTART_LABEL, parse_policy

    if restart != "no":
        parse_policy(restart)
        if getattr(args, "rm", False):
            raise InvalidArgument(f"--restart {restart!r} and --rm cannot be combined")
        labels[RESTART_LABEL] = restart
    if remove_at_exit:
        labels[AUTO_REMOVE_LABEL] = "true"
    return labels


def check_pull(value: str) -> str:
    """A ``--pull`` value, or InvalidArgument naming it."""
    from runtime.core.errors import InvalidArgument

    if value not in ("missing", "always", "never"):
        raise InvalidArgument(f"--pull {value!r}: use missing, always or never")
    return value


def spec_options_from(args: argparse.Namespace, command: list[str], api: Any = None) -> Any:
    """The SpecOptions the flags describe (``command`` empty keeps the image's)."""
    import msgspec

    from runtime.api.specs import SpecOptions

    spec = spec_dict_from(args, command)
    if api is not None:
        resolve_volumes(api, spec)
    return msgspec.convert(spec, SpecOptions)


#: As runtime.plugins.network.api.NETWORK_ANNOTATION and PORTS_ANNOTATION: that
#: module imports msgspec, which ``moorage run`` does without (tests keep them equal).
NETWORK_ANNOTATION = "io.moorage.network"
PORTS_ANNOTATION = "io.moorage.ports"


def _network_mode(text: str) -> str:
    """As runtime.plugins.network.api.parse_mode."""
    from runtime.core.errors import InvalidArgument

    value = text.strip()
    if not value or not all(c.isalnum() or c in "._-" for c in value):
        raise InvalidArgument(f"network {text!r}: use bridge, host, none or a network name")
    return value


def _seccomp_option(options: list[str]) -> str:
    """SpecOptions.seccomp from ``--security-opt`` values: "", "unconfined" or a profile's JSON.

    The profile file is read here, by the client, as Docker does: the daemon may
    not see the caller's files.
    """
    from runtime.core.errors import InvalidArgument

    value = ""
    for option in options:
        key, sep, setting = option.partition("=")
        if key != "seccomp" or not sep or not setting:
            raise InvalidArgument(
                f"--security-opt {option!r}: supported: seccomp=unconfined, seccomp=PATH")
        if setting == "unconfined":
            value = setting
            continue
        try:
            with open(setting, encoding="utf-8") as profile:
                value = profile.read()
        except (OSError, UnicodeDecodeError) as exc:
            # Worded apart from "no such file": exit codes 126/127 are for the command.
            why = ("there is no such profile" if isinstance(exc, FileNotFoundError)
                   else "it may not be read" if isinstance(exc, PermissionError)
                   else getattr(exc, "strerror", None) or str(exc))
            raise InvalidArgument(
                f"--security-opt {option!r}: cannot read {setting}: {why}") from None
    return value


def spec_dict_from(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    """The flags as a SpecOptions JSON object, defaults left out (the daemon validates it)."""
    # The network travels in the spec's annotations; the runtime acts on them at task create.
    annotations = {NETWORK_ANNOTATION: _network_mode(args.network)}
    if args.publish:
        from runtime.plugins.network.api import encode_ports, parse_publish

        annotations[PORTS_ANNOTATION] = encode_ports([parse_publish(p) for p in args.publish])
    spec: dict[str, Any] = {
        "args": command or None,
        "entrypoint": [args.entrypoint] if args.entrypoint is not None else None,
        "env": expand_env([*read_env_files(getattr(args, "env_file", [])), *args.env]),
        "cwd": args.workdir, "user": args.user,
        "hostname": args.hostname,
        "mounts": [*(parse_mount(m) for m in args.mount),
                   *(parse_volume(v) for v in getattr(args, "volume", [])),
                   *(parse_tmpfs(t) for t in getattr(args, "tmpfs", []))],
        "readonly_rootfs": args.read_only, "privileged": args.privileged,
        "terminal": args.tty, "cpus": args.cpus,
        "memory": parse_size(args.memory) if args.memory else 0,
        "pids_limit": args.pids_limit, "annotations": annotations,
        "seccomp": _seccomp_option(getattr(args, "security_opt", [])),
    }  # fmt: skip
    # Defaults are left out; an empty entrypoint list still means "none".
    return {k: v for k, v in spec.items() if v or (k == "entrypoint" and v is not None)}


def register(sub: Any) -> None:
    """Add ``run``."""
    import argparse

    from runtime.cli.verbs import docker_parser

    p = docker_parser(sub.add_parser("run", help="run a command in a new container"))
    add_spec_flags(p)
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("--name", default="", help="container id (default: random)")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)


def exit_code_for(error: Exception) -> int:
    """127/126 for a command not found / not executable (by the error's code), else 125."""
    return _EXIT_BY_CODE.get(str(getattr(error, "code", "")), EXIT_MOORAGE_FAILED)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moorage run``."""
    from runtime.cli.main import lean_client
    from runtime.cli.namespaces import parse_labels
    from runtime.core.errors import MoorageError

    def puller(image: str) -> None:
        from runtime.cli.images import pull_for_run

        pull_for_run(args, image)

    try:
        # With -d, the daemon removes it at exit (the auto-remove label): no client is left.
        labels = {**parse_labels(args.label), **policy_labels(args)}
        options = RunOptions(
            name=args.name, remove=args.rm and not args.detach, detach=args.detach,
            tty=args.tty, interactive=args.interactive, runtime=args.runtime,
            snapshotter=args.snapshotter, rootfs=args.rootfs, labels=labels,
            spec=spec_dict_from(args, []), pull=check_pull(args.pull), puller=puller,
        )  # fmt: skip
        return run_container(lean_client(args), args.image, list(args.command), options)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_code_for(exc)


class PreparedRootfs:
    """Where a new container's root filesystem comes from.

    Attributes:
        config: The image's run config (``None`` for a plain directory).
        mounts: The mounts to hand to task create.
        snapshotter: The snapshotter holding the container's snapshot, or ``""``.
        key: The snapshot's key (the container id), or ``""``.
        lease: A lease protecting the snapshot until the container refers to it.
    """

    def __init__(self, config: Any, mounts: list[Any], snapshotter: str = "", key: str = "",
                 lease: str = "") -> None:
        self.config = config
        self.mounts = mounts
        self.snapshotter = snapshotter
        self.key = key
        self.lease = lease

    def release(self, api: Any) -> None:
        """Drop the lease once the container record holds the snapshot (or on failure)."""
        import contextlib

        from runtime.core.errors import MoorageError

        if self.lease:
            with contextlib.suppress(MoorageError):
                api.delete_lease(self.lease)
            self.lease = ""


def prepare_rootfs(api: Any, image: str, key: str, snapshotter: str = "") -> PreparedRootfs:
    """Unpack ``image`` if needed and prepare the active snapshot ``key`` on it.

    For ``containers create``, which makes the record after the snapshot: the
    snapshot is prepared under a short lease, so that until the record refers
    to it only the lease keeps the garbage collector away, and the lease
    expires by itself if this client dies first. (``run`` makes both in one
    call, record first: see :func:`run_container`.)
    """
    import msgspec

    from runtime.api.mounts import Mount
    from runtime.api.specs import ImageConfig

    prepared = api.image_rootfs(image, snapshotter)
    config = msgspec.convert(prepared.config or {}, ImageConfig)
    lease = api.create_lease(labels={"moorage/operation": "run"}, expire=300).id
    try:
        mounts = api.prepare_snapshot(prepared.snapshotter, key, prepared.chain_id, lease=lease)
    except BaseException:
        PreparedRootfs(None, [], lease=lease).release(api)
        raise
    rootfs = [Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
              for m in mounts]
    return PreparedRootfs(config, rootfs, prepared.snapshotter, key, lease)


def _spec_dict(spec: Any) -> dict[str, Any]:
    """SpecOptions (a Struct, a JSON object or ``None``) as a JSON object."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    import msgspec

    return dict(msgspec.to_builtins(spec))


def run_container(api: Any, image: str, command: list[str], options: RunOptions) -> int:
    """Create, start and (unless detached) follow a container; return its exit code.

    Two requests make a detached container (the image's root filesystem, then
    ``POST /v1/run``); an attached one adds the attach websocket, which starts
    the process, and with ``remove`` one ``DELETE /v1/run/{id}`` at the end.

    Args:
        api: A :class:`runtime.client.Client` or :class:`runtime.client.lean.LeanClient`.
        image: Image reference (ignored for the spec with ``options.rootfs``).
        command: Replaces the image's ``Cmd`` when not empty.
        options: Everything else.

    Raises:
        MoorageError: Moorage failed (the caller maps it with :func:`exit_code_for`).
    """
    container_id = options.name or os.urandom(6).hex()
    spec = _spec_dict(options.spec)
    resolve_volumes(api, spec)
    spec["args"] = command or None
    spec["terminal"] = options.tty
    container: dict[str, Any] = {
        "id": container_id, "image": image, "runtime": {"name": options.runtime},
        "spec_options": spec, "labels": dict(options.labels),
    }  # fmt: skip
    # The daemon refuses host namespaces and privileges unless asked explicitly:
    # --privileged and --net host are the user's explicit word.
    network = (spec.get("annotations") or {}).get("io.moorage.network")
    if spec.get("privileged") or network == "host":
        container["allow_privileged"] = True
    parent, rootfs = "", []
    if options.rootfs:
        path = os.path.abspath(options.rootfs)
        rootfs = [{"type": "bind", "source": path, "options": ["rbind", "rw"]}]
    else:
        prepared = image_rootfs(api, image, options)
        container.update(image_config=prepared.config or None,
                         snapshotter=prepared.snapshotter, snapshot_key=container_id)
        parent = prepared.chain_id
    # The daemon undoes everything it made if this fails.
    api.run(container, parent=parent, rootfs=rootfs, stdin=options.interactive,
            start=options.detach)
    if options.detach:
        print(container_id)
        return 0
    try:
        code = _attached(api, container_id, options)
    except BaseException:
        if options.remove:
            _cleanup(api, container_id)
        raise
    if options.remove:
        _cleanup(api, container_id)
    return code


def image_rootfs(api: Any, image: str, options: RunOptions) -> Any:
    """``api.image_rootfs``, pulling the image first as ``options.pull`` says."""
    from runtime.core.errors import NotFound

    if options.pull == "always" and options.puller is not None:
        options.puller(image)
    try:
        return api.image_rootfs(image, options.snapshotter)
    except NotFound:
        if options.pull != "missing" or options.puller is None:
            raise
    print(f"Unable to find image {image!r} locally", file=sys.stderr)
    options.puller(image)
    return api.image_rootfs(image, options.snapshotter)


def _attached(api: Any, container_id: str, options: RunOptions) -> int:
    from runtime.cli.terminal import relay

    attachment = api.attach_task(container_id, stdin=options.interactive, start=True)

    def forward(signum: int) -> None:
        # Outside a terminal, Ctrl-C and SIGTERM are meant for the container.
        api.kill_task(container_id, signum)

    try:
        status = relay(attachment, stdin=options.interactive,
                       tty_mode=options.tty and os.isatty(sys.stdin.fileno()),
                       on_signal=forward)
    finally:
        attachment.close()
    if status is None:
        status = api.wait_task(container_id).exit_status
    return int(status)


def _cleanup(api: Any, container_id: str) -> None:
    """Remove what :func:`run_container` made, best effort, reporting failures."""
    from runtime.core.errors import MoorageError

    try:
        api.remove(container_id, force=True, snapshot=True)
    except MoorageError as exc:
        if exc.code != "not_found":
            print(f"moorage: cannot remove container {container_id}: {exc.message}",
                  file=sys.stderr)
